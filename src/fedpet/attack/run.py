"""``fedpet attack``: invert the update one client sends and score the text it gives away.

The client starts from the global state (at initialisation, or a run's last checkpoint),
takes one step of plain gradient descent on one batch with dropout off, and sends its update
through its own upload path: DP's clip and noise share (distributed noise, the one an
update carries on the wire), then the upload codec. The attacker, the server, knows the
model, that state, the learning rates and each example's length, and recovers the tokens
(:mod:`fedpet.attack.inversion`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from fedpet.attack.inversion import (
    embedding_rows,
    labels_from_bias,
    match_gradients,
    nearest_tokens,
)
from fedpet.attack.tokens import frequent_tokens, token_scores
from fedpet.config import Config
from fedpet.data.batching import collate
from fedpet.errors import FedpetError
from fedpet.experiment import Experiment, prepare
from fedpet.methods.lora import merges_base
from fedpet.model import TextClassifier, model_path
from fedpet.privacy.dp import client_noise_std
from fedpet.rundir import load_checkpoint
from fedpet.runtime.client_half import ClientHalf
from fedpet.seeding import derive_seed
from fedpet.stages import Report
from fedpet.state import TrainableState, schema

HEAD_BIAS = "head.bias"


@dataclass(frozen=True)
class AttackSpec:
    """What is attacked and how hard.

    Attributes
    ----------
    examples
        Training examples attacked, drawn with the run seed among those of at most
        ``max_tokens`` tokens.
    batch
        Examples per attacked update (``examples`` must be a multiple).
    steps, lr
        Adam steps and learning rate of gradient matching.
    max_tokens
        Longest example (special tokens included) that may be drawn.
    """

    examples: int = 20
    batch: int = 1
    steps: int = 300
    lr: float = 0.01
    max_tokens: int = 32

    def check(self) -> None:
        """Refuse values the attack cannot run with, naming the field."""
        rules = [
            (self.examples >= 1, "--examples", self.examples, "an integer >= 1"),
            (self.batch >= 1, "--batch", self.batch, "an integer >= 1"),
            (
                self.examples % max(self.batch, 1) == 0,
                "--examples",
                self.examples,
                f"a multiple of --batch ({self.batch})",
            ),
            (self.steps >= 0, "--steps", self.steps, "an integer >= 0"),
            (self.lr > 0, "--attack-lr", self.lr, "a number > 0"),
            (self.max_tokens >= 3, "--max-tokens", self.max_tokens, "an integer >= 3"),
        ]
        for ok, flag, value, allowed in rules:
            if not ok:
                raise FedpetError(f"{flag} = {value} is not allowed: use {allowed}")


def pick_batches(exp: Experiment, spec: AttackSpec) -> list[np.ndarray]:
    """The attacked batches: seeded draws of training examples short enough."""
    short = np.flatnonzero(exp.train.lengths <= spec.max_tokens)
    if len(short) < spec.examples:
        raise FedpetError(
            f"--examples = {spec.examples} is not allowed: the training data has "
            f"{len(short)} examples of at most {spec.max_tokens} tokens (--max-tokens)"
        )
    rng = np.random.default_rng(derive_seed(exp.cfg.seed, "attack"))
    chosen = rng.permutation(short)[: spec.examples]
    return [chosen[i : i + spec.batch] for i in range(0, spec.examples, spec.batch)]


def client_update(exp: Experiment, batch: dict[str, torch.Tensor]) -> TrainableState:
    """One step of gradient descent on ``batch`` from the loaded state: ``-lr * gradient``."""
    exp.model.eval()
    logits = exp.model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
    grads = torch.autograd.grad(loss, list(exp.params.values()), materialize_grads=True)
    lrs = exp.learning_rates
    return {n: -lrs[n] * g for n, g in zip(exp.params, grads, strict=True)}


def embedding_name(exp: Experiment) -> str | None:
    """The name of the word-embedding matrix among the trainable tensors, if it trains."""
    assert isinstance(exp.model, TextClassifier)  # attack() refuses generative runs
    weight = exp.model.word_embeddings().weight
    return next((n for n, p in exp.params.items() if p is weight), None)


def known_positions(mask: torch.Tensor) -> torch.Tensor:
    """What the attacker knows of each example's layout: [CLS] first, [SEP] last, padding."""
    lengths = mask.sum(1, keepdim=True)
    position = torch.arange(mask.shape[1]).unsqueeze(0)
    return (position == 0) | (position == lengths - 1) | (mask == 0)


def recover(
    exp: Experiment,
    spec: AttackSpec,
    sent: TrainableState,
    batch: dict[str, torch.Tensor],
    seed: int,
) -> tuple[set[int], bool | None]:
    """The token ids the attacker reads from ``sent``; whether it got the labels right.

    The labels matter only to gradient matching (None when the embedding rows are read).
    """
    lrs = exp.learning_rates
    observed = {n: -t / lrs[n] for n, t in sent.items()}
    rows = embedding_name(exp)
    if rows is not None:
        return embedding_rows(observed[rows]), None
    labels = labels_from_bias(observed[HEAD_BIAS], len(batch["labels"]))
    known = known_positions(batch["attention_mask"])
    probe = {**batch, "input_ids": torch.where(known, batch["input_ids"], 0), "labels": labels}
    assert isinstance(exp.model, TextClassifier)
    embeds = match_gradients(
        exp.model, exp.params, observed, probe, known, spec.steps, spec.lr, seed
    )
    weight = exp.model.word_embeddings().weight
    ids = nearest_tokens(embeds, weight.detach())
    correct = bool(torch.equal(labels.sort().values, batch["labels"].sort().values))
    return {int(i) for i in ids[~known]}, correct


def attack(
    cfg: Config,
    spec: AttackSpec,
    run: Path | None = None,
    report: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Attack ``spec.examples`` updates of the configured method; the scores, averaged and each.

    With ``run``, the clients start from that run's last checkpointed global state;
    otherwise from the method's initialisation. The attack runs on the CPU, whatever the
    config's device. ``report(done, total, mean F1 so far)`` is called after each update.
    """
    spec.check()
    if cfg.data.objective != "classify":
        raise FedpetError(
            f"data.objective = {cfg.data.objective!r} is not allowed with fedpet attack: the "
            "attacks read a classifier's updates (its head's bias and pooled embeddings)"
        )
    exp = prepare(dataclasses.replace(cfg, device="cpu"), attention="eager")
    rounds = 0
    if run is not None:
        checkpoint = load_checkpoint(run)
        state = checkpoint.tensors["global"]
        if {n for n in state if not merges_base(n)} != set(exp.params):
            raise FedpetError(
                f"--run {str(run)!r}: its checkpoint does not hold the trainable tensors of "
                f"method {cfg.method.name!r}; attack a run with the run's own config"
            )
        exp.load_state(state)
        rounds = checkpoint.round
    tokenizer = AutoTokenizer.from_pretrained(model_path(cfg.model))
    special = set(tokenizer.all_special_ids)
    prior = frequent_tokens(exp.train.input_ids, special)
    half = ClientHalf.of(exp)
    records = []
    began = time.perf_counter()
    batches = pick_batches(exp, spec)
    for k, indices in enumerate(batches):
        batch = collate(exp.train, indices)
        update = client_update(exp, batch)
        sent_update, _ = half.prepare(update, Report(), rounds, k)
        payload = half.encode(sent_update, rounds, k, {})
        sent = half.up.decode(payload, schema(update))
        found, labels_right = recover(exp, spec, sent, batch, derive_seed(cfg.seed, "attack", k))
        got = found - special
        true = {int(i) for i in batch["input_ids"][batch["attention_mask"] == 1]} - special
        scores = token_scores(got, true)
        records.append(
            {
                "examples": [int(i) for i in indices],
                "true": tokenizer.convert_ids_to_tokens(sorted(true)),
                "recovered": tokenizer.convert_ids_to_tokens(sorted(got)),
                "labels_right": labels_right,
                **asdict(scores),
                "prior_f1": token_scores(prior[: len(got)], true).f1,
            }
        )
        if report is not None:
            report(k + 1, len(batches), float(np.mean([r["f1"] for r in records])))
    dp = cfg.privacy
    return {
        "task": cfg.data.task,
        "model": cfg.model,
        "method": cfg.method.name,
        "rounds_trained": rounds,
        "run": None if run is None else str(run),
        "codec": cfg.codec.up,
        "dp": (
            {
                "clip": dp.clip,
                "noise_multiplier": dp.noise_multiplier,
                "clients_per_round": cfg.federation.clients_per_round,
                "noise_std": client_noise_std(cfg),
            }
            if dp.enabled
            else None
        ),
        "recovery": "embedding rows" if embedding_name(exp) else "gradient matching",
        **asdict(spec),
        **{
            key: float(np.mean([r[key] for r in records]))
            for key in ("precision", "recall", "f1", "prior_f1")
        },
        "seconds": time.perf_counter() - began,
        "batches": records,
    }
