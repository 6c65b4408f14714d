"""Local test splits: each client's own held-out examples, seeded, recorded, refused if empty."""

from pathlib import Path

import numpy as np
import pytest
from helpers import refusal, refused, run_argv

from fedpet.data.partition import hold_out
from fedpet.errors import FedpetError


def test_each_client_holds_out_its_share_of_its_own_examples() -> None:
    rng = np.random.default_rng(0)
    parts = [np.sort(rng.choice(1000, size=n, replace=False)) for n in (10, 7, 25, 3)]
    train, test = hold_out(parts, 0.3, seed=4)
    assert [len(t) for t in test] == [3, 2, 8, 1]  # 0.3 x n, rounded half up
    for part, a, b in zip(parts, train, test, strict=True):
        assert not set(a) & set(b) and sorted([*a, *b]) == part.tolist()
        assert (np.diff(a) > 0).all() and (np.diff(b) > 0).all()
    again = hold_out(parts, 0.3, seed=4)[1]
    other = hold_out(parts, 0.3, seed=5)[1]
    assert all(np.array_equal(x, y) for x, y in zip(test, again, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(test, other, strict=True))


def test_a_client_left_without_training_or_test_examples_is_refused() -> None:
    with pytest.raises(FedpetError, match="leaves client 1 \\(3 examples\\) no test example"):
        hold_out([np.arange(10), np.arange(3)], 0.1, seed=0)
    with pytest.raises(FedpetError, match="leaves client 0 \\(1 examples\\) no training"):
        hold_out([np.arange(1), np.arange(30)], 0.5, seed=0)


def test_a_run_whose_clients_would_hold_no_test_example_is_refused_before_writing(
    tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    argv = run_argv(tiny_model_dir, tmp_path / "run", "--set", "data.client_test_fraction=0.01")
    assert "data.client_test_fraction = 0.01 leaves client 0" in refused(argv, capsys, tmp_path)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--dp", "--dp-noise", "1"], "0 with privacy.enabled"),
        (["--method", "adapter", "--algorithm", "fedsa-lora"], "lora with algorithm fedsa-lora"),
        (["--set", "data.client_test_fraction=1"], "a number in [0, 1)"),
    ],
)
def test_what_local_tests_and_personal_algorithms_rule_out_is_refused(
    flags: list[str], says: str, capsys
) -> None:
    extra = [] if flags[0] != "--dp" else ["--set", "data.client_test_fraction=0.2"]
    assert says in refusal([*flags, *extra], capsys)
