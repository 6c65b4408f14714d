"""A cohort trained together (one batched pass) ends as its clients trained one by one."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedpet.algorithms import PlainTraining, get_algorithm
from fedpet.cohort import Job, stack_batches, train_cohort, width_groups
from fedpet.data.batching import collate
from fedpet.dropout import Stream, keyed, seed_tensor
from fedpet.experiment import Experiment, prepare
from fedpet.runtime.faults import ClientFailure, FailingHook
from fedpet.state import extract


def jobs(exp: Experiment, hook=None) -> list[Job]:
    """Clients 0-3 from the global start, each with its own seed (their sizes differ)."""
    start = extract(exp.params)
    return [Job(exp.clients[k], start, hook or PlainTraining(), 100 + k) for k in range(4)]


def one_by_one(exp: Experiment, todo: list[Job]) -> list:
    start = extract(exp.params)
    out = []
    for k, job in enumerate(todo):
        try:
            out.append(exp.train_client(k, job.start, job.hook, job.seed))
        except ClientFailure as exc:
            out.append(exc)
    exp.load_state(start)
    return out


def together(exp: Experiment, todo: list[Job], cost: float = math.inf) -> list:
    """The cohort's results, each step in the passes a pass ``cost`` makes cheapest."""
    names = list(exp.params)
    return train_cohort(
        exp.model,
        names,
        exp.head_names,
        exp.train,
        todo,
        exp.cfg.train,
        failures=(ClientFailure,),
        cost=cost,
    )


def assert_close(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert (x.steps, x.seen, x.num_examples) == (y.steps, y.seen, y.num_examples)
        assert x.loss == pytest.approx(y.loss, rel=1e-5)
        for name in x.state:
            torch.testing.assert_close(x.state[name], y.state[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "method", ["lora", "adapter", "prefix", "prompt", "ia3", "bitfit", "lora-sb"]
)
def test_each_method_trained_as_a_cohort_equals_one_client_at_a_time(tiny_config, method) -> None:
    # dropout on (the tiny BERT's 0.1), two local epochs, clients of different sizes: the
    # smaller ones leave the stack first
    exp = prepare(
        tiny_config(
            **{"method.name": method, "train.local_epochs": 2, "data.partition": "quantity"}
        )
    )
    sizes = {len(exp.clients[k]) for k in range(4)}
    assert len(sizes) > 1
    todo = jobs(exp)
    alone = one_by_one(exp, todo)
    assert_close(together(exp, todo), alone)  # one pass a step
    assert_close(together(exp, todo, cost=0), alone)  # a pass per batch width
    moved = [float((alone[0].state[n] - todo[0].start[n]).abs().max()) for n in todo[0].start]
    assert max(moved) > 1e-4  # training really moved the tensors


def test_fedprox_clipping_and_a_crash_in_a_cohort(tiny_config) -> None:
    # FedProx's proximal term per client, clipping by each client's own norm, and a client
    # that crashes at its second step: dropped, while the others go on unchanged
    exp = prepare(
        tiny_config(
            **{"algorithm.name": "fedprox", "algorithm.mu": 0.5, "train.max_grad_norm": 0.01}
        )
    )
    algorithm = get_algorithm(exp.cfg.algorithm)
    hook = algorithm.client_hook(extract(exp.params), {})

    def todo() -> list[Job]:  # a crash counts its steps: a new one for each run
        made = jobs(exp, hook)
        made[1] = Job(made[1].indices, made[1].start, FailingHook(hook, fail_at_step=2), 101)
        return made

    alone, cohort = one_by_one(exp, todo()), together(exp, todo(), cost=0)
    assert isinstance(alone[1], ClientFailure) and isinstance(cohort[1], ClientFailure)
    assert_close([cohort[k] for k in (0, 2, 3)], [alone[k] for k in (0, 2, 3)])


def test_a_dropout_mask_does_not_depend_on_padding_or_the_cohort() -> None:
    x = torch.ones(3, 5, 7)
    stream = Stream(seed_tensor(42))
    with keyed(stream):
        stream.start_step(4)
        plain = torch.nn.functional.dropout(x, 0.3)
        stream.start_step(4)
        padded = torch.nn.functional.dropout(torch.ones(4, 9, 7), 0.3)
        stream.start_step(4)
        other = torch.nn.functional.dropout(x, 0.3)  # the same step and call: the same mask
        again = torch.nn.functional.dropout(x, 0.3)  # the next call: another mask
    assert torch.equal(padded[:3, :5], plain) and torch.equal(other, plain)
    assert not torch.equal(again, plain)
    kept = (plain > 0).float().mean()
    assert 0.55 < kept < 0.85 and torch.allclose(plain.unique(), torch.tensor([0.0, 1 / 0.7]))
    # outside the block, torch's own dropout
    assert torch.nn.functional.dropout.__module__ == "torch.nn.functional"


def test_stacked_batches_pad_with_masked_positions_and_unscored_rows(tiny_config) -> None:
    exp = prepare(tiny_config())
    a, b = collate(exp.train, np.arange(3)), collate(exp.train, np.arange(3, 8))
    stacked = stack_batches([a, b], exp.train.pad_id)  # client rows 0-4, then 5-9
    width = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    assert stacked["input_ids"].shape == stacked["attention_mask"].shape == (10, width)
    for first, batch in ((0, a), (5, b)):
        rows, cols = batch["input_ids"].shape
        mine = stacked["input_ids"][first : first + 5]
        assert mine[:rows, :cols].equal(batch["input_ids"])
        assert (mine[:rows, cols:] == exp.train.pad_id).all()
        assert stacked["attention_mask"][first : first + rows, cols:].sum() == 0
        assert mine[rows:].equal(mine[:1].expand(5 - rows, -1))  # copies of the first row


def partitions(items: list[int]):
    """Every way to split ``items`` into groups (set partitions)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for split in partitions(rest):
        yield [[first], *split]
        for i in range(len(split)):
            yield [*split[:i], [first, *split[i]], *split[i + 1 :]]


@given(
    widths=st.lists(st.integers(1, 64), min_size=1, max_size=7),
    rows=st.integers(1, 8),
    cost=st.sampled_from([0, 1, 30, 200, 5000]),
)
def test_width_groups_are_the_cheapest_grouping_of_a_step(widths, rows, cost) -> None:
    def price(groups: list[list[int]]) -> int:
        return sum(cost + len(g) * rows * max(widths[i] for i in g) for g in groups)

    groups = width_groups(widths, [rows] * len(widths), cost)
    assert sorted(i for g in groups for i in g) == list(range(len(widths)))
    # equal rows: no grouping of the clients at all is cheaper
    assert price(groups) == min(price(p) for p in partitions(list(range(len(widths)))))
    narrowest = [max(widths[i] for i in g) for g in groups]
    assert narrowest == sorted(narrowest)


def test_width_groups_weigh_a_pass_against_the_tokens_padding_adds() -> None:
    widths, rows = [30, 12, 30, 64, 12], [8] * 5
    assert width_groups(widths, rows, 0) == [[1, 4], [0, 2], [3]]  # no client padded
    assert width_groups(widths, rows, math.inf) == [[1, 4, 0, 2, 3]]  # one pass
    # the two 12s padded to 30 add 2 x 8 x 18 = 288 tokens: worth one pass less above that
    assert width_groups(widths, rows, 287) == [[1, 4], [0, 2], [3]]
    assert width_groups(widths, rows, 289) == [[1, 4, 0, 2], [3]]
    # rows count too: 5 rows padded to 8 add 3 x 30 = 90 tokens
    assert width_groups([30, 30], [8, 5], 89) == [[0], [1]]
    assert width_groups([30, 30], [8, 5], 91) == [[0, 1]]
