"""Client-level DP: the accountant's epsilon, clipping, noise, and DP in a real run."""

import itertools
import json
import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import GaussianDpEvent
from helpers import refusal, run_argv
from safetensors.torch import load_file

from fedpet.cli import main
from fedpet.config import PrivacyConfig
from fedpet.privacy.accountant import calibrate, epsilon
from fedpet.privacy.dp import clip, gaussian_noise
from fedpet.state import l2_norm


@pytest.mark.parametrize(("accountant", "expected"), [("rdp", 7.90), ("pld", 7.05)])
def test_epsilon_matches_dp_accounting_for_the_reference_setting(
    accountant: str, expected: float
) -> None:
    # 100 clients, q = 0.1 Poisson, z = 1, 100 rounds, delta = 1e-5
    privacy = PrivacyConfig(enabled=True, accountant=accountant)
    assert epsilon(privacy, 100, 10, 1.0, 100) == pytest.approx(expected, abs=0.005)
    assert epsilon(privacy, 100, 10, 1.0, 0) == 0.0
    assert epsilon(privacy, 100, 10, 1.0, 50) < epsilon(privacy, 100, 10, 1.0, 100)


def _gaussian_epsilon(sensitivity: float, std: float, rounds: int, delta: float) -> float:
    """Epsilon of ``rounds`` Gaussian mechanisms by hand: RDP alpha s^2 / (2 std^2) per round,
    converted at ``delta`` as Canonne, Kamath and Steinke (2020), minimised over orders."""
    orders = np.linspace(1.01, 400, 400_000)
    rdp = rounds * orders * sensitivity**2 / (2 * std**2)
    conversion = np.log1p(-1 / orders) - (np.log(delta) + np.log(orders)) / (orders - 1)
    return float((rdp + conversion).min())


@pytest.mark.parametrize(("z", "rounds"), [(1.0, 1), (0.5, 3), (2.0, 10)])
def test_a_cohort_of_every_client_is_a_gaussian_mechanism_of_sensitivity_two_clips(
    z: float, rounds: int
) -> None:
    # a fixed cohort of all 10 clients: replacing one client moves the sum of clipped
    # updates by up to 2 C, and the noise has std z C
    privacy = PrivacyConfig(enabled=True, sampling="fixed")
    by_hand = _gaussian_epsilon(2.0, z, rounds, privacy.delta)
    assert epsilon(privacy, 10, 10, z, rounds) == pytest.approx(by_hand, rel=2e-3)


def test_fixed_cohorts_are_accounted_at_half_the_noise_multiplier() -> None:
    # dp-accounting's multiplier is the noise std over the sum's sensitivity: z C / (2 C)
    privacy = PrivacyConfig(enabled=True, sampling="fixed")
    accountant = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    event = dp_accounting.SampledWithoutReplacementDpEvent(100, 10, GaussianDpEvent(0.5))
    accountant.compose(event, 100)
    expected = accountant.get_epsilon(privacy.delta)
    assert expected == pytest.approx(83.94, abs=0.01)
    assert epsilon(privacy, 100, 10, 1.0, 100) == pytest.approx(expected, rel=1e-9)
    # a target epsilon calibrates z for that accounting
    target = PrivacyConfig(enabled=True, sampling="fixed", target_epsilon=8.0)
    z = calibrate(target, 100, 10, 10)
    spent = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    spent.compose(
        dp_accounting.SampledWithoutReplacementDpEvent(100, 10, GaussianDpEvent(z / 2)), 10
    )
    assert 8.0 - 0.05 < spent.get_epsilon(1e-5) <= 8.0 + 1e-3


def test_a_target_epsilon_calibrates_the_smallest_noise_that_meets_it() -> None:
    privacy = PrivacyConfig(enabled=True, target_epsilon=4.0)
    z = calibrate(privacy, 100, 10, 50)
    assert epsilon(privacy, 100, 10, z, 50) <= 4.0 + 1e-3
    assert epsilon(privacy, 100, 10, z * 0.98, 50) > 4.0


def test_clipping_bounds_the_norm_and_keeps_the_direction() -> None:
    update = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])}  # norm 5
    clipped = clip(update, 1.0)
    assert l2_norm(clipped) == pytest.approx(1.0)
    assert torch.allclose(clipped["a"], torch.tensor([0.6, 0.0]))
    assert clip(update, 10.0) is update  # shorter than the bound: untouched


def test_noise_has_the_stated_std_and_is_seeded() -> None:
    like = {"w": torch.zeros(200, 100), "b": torch.zeros(5000)}
    noise = gaussian_noise(like, 0.3, seed=4)
    values = torch.cat([t.flatten() for t in noise.values()])
    # 25,000 draws: the sample std is within 2% of 0.3 (about 4.5 standard errors)
    assert abs(float(values.std()) - 0.3) < 0.006 and abs(float(values.mean())) < 0.01
    assert torch.equal(gaussian_noise(like, 0.3, seed=4)["w"], noise["w"])


def _dp_run(model: Path, out: Path, *flags: str) -> tuple[list[dict], dict]:
    argv = run_argv(
        model, out, "--seed", "2", "--clients", "8", "--clients-per-round", "4", "--dp", *flags
    )
    assert main(argv) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "summary.json").read_text())


SEEDED = ("--set", "privacy.reproducible=true")
"""DP drawn from the run seed, so that a test can know each round's cohort (not private)."""


def _cohort_sizes(rounds: int) -> list[int]:
    """The Poisson cohorts of a seeded :func:`_dp_run` (seed 2, 4 of 8 a round), by round."""
    from fedpet.runtime.rounds import sample_cohort

    return [len(sample_cohort(2, r, 8, 4, poisson=True)) for r in range(1, rounds + 1)]


def _moved(out: Path) -> dict[str, torch.Tensor]:
    """How far a run's final global state is from its initial one, per tensor."""
    from fedpet.experiment import prepare
    from fedpet.launch import run_config
    from fedpet.state import extract

    start = extract(prepare(run_config(out)).params)
    final = load_file(out / "checkpoint" / "global.safetensors")
    return {k: final[k] - start[k] for k in final}


def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.flatten() for t in state.values()])


def test_dp_bounds_each_client_and_adds_noise_of_the_stated_std(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # no noise, a tiny clip: every round moves the state by at most its cohort x C / 4
    rows, summary = _dp_run(
        tiny_model_dir, tmp_path / "clip", "--dp-noise", "0", "--dp-clip", "1e-3", *SEEDED
    )
    moved = l2_norm(_moved(tmp_path / "clip"))
    assert 0 < moved <= sum(_cohort_sizes(2)) * 1e-3 / 4 + 1e-7
    assert all(r["epsilon"] == math.inf for r in rows)  # no noise: no guarantee
    # noise, a clip that makes the updates negligible: each released round adds noise of
    # std z C / 4 (a Poisson cohort can be empty: that round is skipped, nothing released)
    flags = ("--dp-noise", "2", "--dp-clip", "1e-6", "--rounds", "3", *SEEDED)
    rows, summary = _dp_run(tiny_model_dir, tmp_path / "noise", *flags)
    released = sum(n > 0 for n in _cohort_sizes(3))
    assert released >= 1
    change = _flat(_moved(tmp_path / "noise"))
    std = 2 * 1e-6 / 4 * math.sqrt(released)
    assert change.numel() > 2000 and abs(float(change.std()) - std) < 0.06 * std
    assert summary["noise_multiplier"] == 2.0 and summary["epsilon"] == rows[-1]["epsilon"] > 0


@pytest.mark.parametrize("failure_rate", [0.0, 0.5], ids=["all-arrive", "half-fail"])
def test_distributed_noise_adds_up_to_the_stated_std(
    tiny_model_dir: Path, tmp_path: Path, failure_rate: float
) -> None:
    out = tmp_path / "distributed"
    fixed = ["--set", "privacy.sampling=fixed", "--set", "privacy.noise=distributed"]
    faults = ["--client-failure-rate", str(failure_rate)]
    _dp_run(
        tiny_model_dir,
        out,
        "--dp-noise",
        "2",
        "--dp-clip",
        "1e-6",
        "--rounds",
        "1",
        *fixed,
        *faults,
    )
    # a DP run releases no count of its cohort: the server's own checkpoint holds it
    failed = json.loads((out / "checkpoint" / "state.json").read_text())["totals"]["failed"]
    if failure_rate:  # some clients, and their shares of the noise, are lost
        assert 1 <= 4 - failed < 4
    else:
        assert failed == 0  # a fixed cohort of 4 clients, all aggregated
    # each client's share has std z C / 2; the server adds the shares of those that did not
    # arrive: the sum has std z C, the mean over 4 std z C / 4, as with central noise
    std = 2 * 1e-6 / 4
    assert abs(float(_flat(_moved(out)).std()) - std) < 0.06 * std


def test_adaptive_clipping_follows_the_noised_quantile(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from fedpet.privacy.dp import next_clip, update_noise_multiplier

    assert update_noise_multiplier(1.0, 1.0) == pytest.approx((1 - 0.25) ** -0.5)
    assert update_noise_multiplier(1.0, None) == 1.0
    assert next_clip(2.0, 0.9, 0.5, 0.2) == pytest.approx(2.0 * math.exp(-0.08))
    # a clip far above every update: all n aggregated ones are within it, the released sum
    # of indicators shifted by -1/2 is n / 2 plus noise (std 4 / 20 = 0.2), and the fraction
    # within, that sum over the expected 4 plus 1/2, moves the clip by
    # exp(-0.2 (fraction - 0.5)) (the noise is 0.05 of the fraction)
    flags = ["--dp-noise", "0.1", "--dp-clip", "1000", "--set", "privacy.target_quantile=0.5"]
    rows, _ = _dp_run(tiny_model_dir, tmp_path / "adaptive", *flags, "--rounds", "4", *SEEDED)
    clips = [r["dp_clip"] for r in rows]
    assert clips[0] == 1000.0 and len(set(clips)) > 1
    for n, (a, b) in zip(_cohort_sizes(4), itertools.pairwise(clips), strict=False):
        within = 0.5 - math.log(b / a) / 0.2
        expected = n / 2 / 4 + 0.5
        assert a == b if n == 0 else abs(within - expected) < 0.2


def test_adaptive_clipping_spends_what_its_two_gaussian_releases_compose_to() -> None:
    """The reported epsilon of z equals dp-accounting's for the two releases the code makes.

    Measured from the code: the std of the noise on the updates' sum, and how far one
    client moves the released count and its noise. Composed independently by dp-accounting
    under the same Poisson sampling.
    """
    from fedpet.algorithms import Aggregate
    from fedpet.configure import build_config, resolve
    from fedpet.privacy.dp import release
    from fedpet.privacy.randomness import Draws

    fields = {"noise_multiplier": 1.0, "target_quantile": 0.5, "count_noise": 2.0}
    cfg = resolve(
        build_config(
            {
                "privacy": {"enabled": True, **fields},
                "federation": {"clients": 100, "clients_per_round": 10},
            }
        )
    )
    clip_bound, lr, m = 1.0, cfg.privacy.clip_lr, 10

    def released(within: int, counted: int, round_: int) -> tuple[float, torch.Tensor]:
        aggregate = Aggregate()
        for _ in range(counted):
            aggregate.add({"w": torch.zeros(100_000)}, 1.0)
        next_clip = release(cfg, aggregate, clip_bound, within, round_, Draws(0, False))
        fraction = 0.5 - math.log(next_clip / clip_bound) / lr  # the noised fraction within
        return (fraction - 0.5) * m, aggregate.weighted_sum["w"]  # sum of b_k - 1/2, noised

    base, noise = released(5, 10, round_=1)
    update_std = float(noise.std())
    # a client more, within the clip (b = 1) or not (b = 0), with the same noise draw
    moved = {released(6, 11, 1)[0] - base, released(5, 11, 1)[0] - base}
    sensitivity = max(abs(d) for d in moved)
    assert sensitivity == pytest.approx(0.5, abs=1e-9)
    count_std = float(np.std([released(5, 10, r)[0] for r in range(2, 2002)]))
    assert count_std == pytest.approx(2.0, rel=0.05)
    both = dp_accounting.ComposedDpEvent(
        [GaussianDpEvent(update_std / clip_bound), GaussianDpEvent(2.0 / sensitivity)]
    )
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(0.1, both), 50)
    reported = epsilon(cfg.privacy, 100, 10, 1.0, 50)
    assert reported == pytest.approx(accountant.get_epsilon(cfg.privacy.delta), rel=0.01)


ROUND_LEAKS = {
    "clients", "aggregated", "attempts", "skipped", "failed", "late", "rejected",
    "bytes_up", "bytes_down", "train_seconds", "train_loss", "examples",
    "lora_aggregation_error",
}  # fmt: skip
SUMMARY_LEAKS = {
    "bytes_up_total", "bytes_down_total", "clients_failed", "clients_late", "updates_rejected",
    "rounds_skipped", "rounds_retried", "train_seconds", "wall_seconds", "train_examples_seen",
}  # fmt: skip


def _leaks(out: Path, export: Path, said: str) -> dict[str, set[str]]:
    """What each output of a run tells of its cohorts or of single clients."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fedpet.tracking import tag

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])  # the rounds' grouped names, the summary's final/
    partition = json.loads((out / "partition.json").read_text())
    card = (export / "README.md").read_text()
    return {
        "metrics.jsonl": ROUND_LEAKS.intersection(*[set(r) for r in rows]),
        "summary.json": SUMMARY_LEAKS & set(json.loads((out / "summary.json").read_text())),
        "tracker": tags & {tag(k) for k in ROUND_LEAKS}
        | tags & {f"final/{k}" for k in SUMMARY_LEAKS},
        "partition.json": {"clients", "label_skew"} & set(partition)
        | {p.name for p in out.glob("partition_*.png")},
        "round lines": {x for x in ("MB up", "MB down", "loss ") if x in said},
        "model card": {"bytes sent"} & {line.split(" | ")[0][2:] for line in card.splitlines()},
    }


def test_a_dp_run_s_outputs_tell_no_cohort_and_no_client(
    tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    found = {}
    for dp in (False, True):
        out, export = tmp_path / f"run-{dp}", tmp_path / f"export-{dp}"
        flags = ("--dp", "--dp-noise", "1") if dp else ()
        argv = run_argv(tiny_model_dir, out, "--clients", "8", "--tracker", "tensorboard", *flags)
        assert main(argv) == 0
        assert main(["export", str(out), "--out", str(export), "--round", "last"]) == 0
        found[dp] = _leaks(out, export, capsys.readouterr().out)
    assert all(found[False].values()), found[False]  # the audit sees them where they are
    assert not any(found[True].values()), found[True]
    summary = json.loads((tmp_path / "run-True" / "summary.json").read_text())
    assert summary["dp_randomness"] == "secret" and summary["epsilon"] > 0
    # one client's payload, fixed by the state and the codecs: fp32 of every trainable value
    assert summary["bytes_per_client_up"] == summary["bytes_per_client_down"]
    assert summary["bytes_per_client_up"] == 4 * summary["trainable_params"]
    assert json.loads((tmp_path / "run-True" / "partition.json").read_text())["num_clients"] == 8
    card = (tmp_path / "export-True" / "README.md").read_text()
    assert "| differential privacy | epsilon" in card and "noise drawn from secret" in card


def test_a_dp_client_sends_its_update_alone(tiny_config, tmp_path: Path) -> None:
    from helpers import client_round

    from fedpet.experiment import prepare
    from fedpet.runtime.client_half import ClientHalf
    from fedpet.stages import Report

    # what a client sends back: the update alone, on every runtime (all call ClientHalf.run)
    for private in (False, True):
        cfg = tiny_config(**{"privacy.enabled": private, "privacy.noise_multiplier": 1.0})
        half = ClientHalf.of(prepare(cfg))
        for secure in (False, True):  # a secure round's report too
            reply = client_round(half, tmp_path, secure=secure)
            assert bool(reply.payload) != secure and (reply.masked is not None) == secure
            assert (reply.report == Report()) == private
            assert private or reply.report.num_examples == len(half.exp.clients[0])


def _distributed(tiny_config, z: float, reproducible: bool):
    return tiny_config(
        **{
            "privacy.enabled": True,
            "privacy.noise_multiplier": z,
            "privacy.noise": "distributed",
            "privacy.sampling": "fixed",
            "privacy.reproducible": reproducible,
        }
    )


def test_a_server_with_the_run_s_config_cannot_undo_a_client_s_noise(
    tiny_config, tmp_path: Path
) -> None:
    from helpers import client_round

    from fedpet.experiment import prepare
    from fedpet.privacy.dp import client_noise_std, gaussian_noise
    from fedpet.runtime.client_half import ClientHalf
    from fedpet.seeding import derive_seed
    from fedpet.state import extract, schema

    def share(cfg) -> dict[str, torch.Tensor]:
        """Client 0's noised share of round 1, as the server decodes it."""
        half = ClientHalf.of(prepare(cfg))
        reply = client_round(half, tmp_path)
        return half.up.decode(reply.payload, schema(extract(half.exp.params)))

    clipped = share(_distributed(tiny_config, 0.0, True))  # the update, clipped, no noise
    for reproducible in (True, False):
        cfg = _distributed(tiny_config, 2.0, reproducible)
        noised = share(cfg)
        # the server's attack: the client's noise, drawn as the config's seed would draw it
        std = client_noise_std(cfg)
        guess = gaussian_noise(noised, std, derive_seed(cfg.seed, "dp-noise", 1, 0))
        error = _flat({k: noised[k] - guess[k] - clipped[k] for k in noised})
        if reproducible:  # from the run seed: undone exactly (the attack works)
            assert float(error.abs().max()) < 1e-5
        else:  # from the client's secret: what is left is two noise draws, std sqrt(2) x std
            assert abs(float(error.std()) / (math.sqrt(2) * std) - 1) < 0.05


def test_a_server_with_the_run_s_config_cannot_predict_the_dp_cohort(
    tiny_config, tmp_path: Path
) -> None:
    from fedpet.experiment import prepare
    from fedpet.rundir import RunDir
    from fedpet.runtime.recorder import Recorder
    from fedpet.runtime.rounds import sample_cohort
    from fedpet.runtime.server_half import ServerHalf

    for reproducible in (True, False):
        cfg = tiny_config(
            **{
                "privacy.enabled": True,
                "privacy.noise_multiplier": 1.0,
                "privacy.reproducible": reproducible,
            }
        )
        exp = prepare(cfg)  # 4 clients, 2 a round: Poisson with q = 1/2
        server = ServerHalf(exp, Recorder(exp, RunDir(tmp_path / str(reproducible))))
        drawn = [server.open(r).clients for r in range(1, 21)]
        # the attacker's prediction: the cohort as the config's seed would draw it
        guess = [sample_cohort(cfg.seed, r, 4, 2, poisson=True).tolist() for r in range(1, 21)]
        hits = sum(d == g for d, g in zip(drawn, guess, strict=True))
        # by chance a round's guess is right with probability 1/16
        assert hits == 20 if reproducible else hits <= 6, hits


Z = ["--dp", "--dp-noise", "1"]
DISTRIBUTED = ["--set", "privacy.noise=distributed", "--set", "privacy.sampling=fixed"]
DP_ERRORS = [
    (["--dp"], "privacy.noise_multiplier = None is not allowed: a number >= 0, or set"),
    ([*Z, "--algorithm", "median"], "algorithm.name = 'median' is not allowed: one of fedavg"),
    ([*Z, "--codec-up", "topk:0.1"],
     "codec.error_feedback = True is not allowed: false with privacy.enabled"),
    ([*Z, "--set", "federation.max_update_norm=5"],
     "federation.max_update_norm = 5.0 is not allowed: null with privacy.enabled"),
    ([*Z, "--set", "privacy.sampling=fixed", "--set", "privacy.accountant=pld"],
     "privacy.accountant = 'pld' is not allowed: rdp with privacy.sampling fixed"),
    ([*Z, "--set", "privacy.noise=distributed"],
     "privacy.noise = 'distributed' is not allowed: central with Poisson sampling"),
    *[([*Z, *DISTRIBUTED, "--codec-up", spec],
       f"codec.up = '{spec}' is not allowed: fp32 with privacy.noise distributed")
      for spec in ("int8", "bf16", "fp16")],
    ([*Z, "--set", "privacy.target_quantile=0.5"],
     "privacy.noise_multiplier = 1.0 is not allowed: below 2 x count_noise = 1 "),
    ([*Z, "--runtime", "flower-sim", "--secure-aggregation"],
     "privacy.noise = 'central' is not allowed: distributed with secagg.enabled"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), DP_ERRORS)
def test_choices_that_void_the_guarantee_are_refused(args: list[str], message: str, capsys) -> None:
    assert message in refusal(args, capsys)
