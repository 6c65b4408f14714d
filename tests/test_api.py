"""The public API and extension without editing fedpet: a method and an algorithm of a user's
module, registered the documented way, run through the API and through the CLI."""

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import refusal, refused, run_argv, tiny_study_base
from safetensors.torch import load_file

from fedpet import api
from fedpet.algorithms import ALGORITHMS
from fedpet.cli import main
from fedpet.codecs import CODECS
from fedpet.methods import METHODS
from fedpet.runtime.pipeline import STAGES

PLUGIN = '''
"""A user's extensions, outside fedpet: a method, an algorithm, a codec and a stage."""

from dataclasses import dataclass

from fedpet.api import (
    AlgorithmOptions, MethodBase, MethodOptions, PlainAlgorithm, Stage, option,
    register_algorithm, register_codec, register_method, register_stage,
)
from fedpet.codecs import Floats
from fedpet.state import add, l2_norm


@dataclass(frozen=True)
class LayerNormOptions(MethodOptions):
    last_layers: int = option(1, "train the LayerNorms of this many last layers")


class LayerNormTuning(MethodBase):
    name = "layernorm"
    default_lr = 1e-3
    options = LayerNormOptions

    def attach(self, encoder, options):
        n = encoder.config.num_hidden_layers
        layers = tuple(f"layer.{i}." for i in range(n - options.last_layers, n))
        for name, param in encoder.named_parameters():
            param.requires_grad_("LayerNorm" in name and any(x in name for x in layers))
        return encoder


@dataclass(frozen=True)
class DampedOptions(AlgorithmOptions):
    damping: float = option(0.5, "fraction of the mean update the server applies")


class DampedAvg(PlainAlgorithm):
    name = "damped-avg"
    options = DampedOptions
    allows_dp = False

    def server_update(self, global_state, server_state, aggregate):
        return add(global_state, aggregate.mean(), self.config.damping), server_state


class NormLog(Stage):
    """Logs the mean norm of the round's aggregated updates."""

    name = "norm-log"

    def server(self, update, weight, arrival):
        arrival.tally["norm"] += l2_norm(update)
        arrival.tally["updates"] += 1
        return update, weight

    def release(self, aggregate, tally, round_):
        return {"mean_update_norm": tally["norm"] / max(tally["updates"], 1)}


register_method(LayerNormTuning())
register_algorithm(DampedAvg)
register_codec("half", Floats("fp16"))
def norm_log(cfg, draws):
    return NormLog() if cfg.algorithm.name == "damped-avg" else None


register_stage("norm-log", norm_log)
'''


@pytest.fixture
def plugin(tmp_path: Path):
    """The plugin file; whatever it registers is unregistered after the test."""
    path = tmp_path / "my_extensions.py"
    path.write_text(PLUGIN)
    registries = (METHODS, ALGORITHMS, CODECS, STAGES)
    before = [set(r) for r in registries]
    yield path
    for registry, names in zip(registries, before, strict=True):
        for name in set(registry) - names:
            del registry[name]
    sys.modules.pop("fedpet_plugin_my_extensions", None)


def _tiny(model: Path, **overrides: object):
    base = {
        "model": str(model),
        "data.max_train_samples": 64,
        "data.max_eval_samples": 32,
        "data.max_length": 32,
        "federation.clients": 4,
        "federation.clients_per_round": 2,
        "federation.rounds": 2,
        "train.batch_size": 8,
    }
    return api.config({**base, **overrides})


def test_a_users_method_and_algorithm_run_through_the_api(
    plugin: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    api.load_plugin(str(plugin))
    cfg = _tiny(tiny_model_dir, **{"method.name": "layernorm", "algorithm.name": "damped-avg"})
    assert cfg.method.last_layers == 1 and cfg.algorithm.damping == 0.5  # their defaults
    result = api.run(cfg, out=tmp_path / "damped")
    state = load_file(result.out / "checkpoint" / "global.safetensors")
    # only the last layer's two LayerNorms (weight and bias of 32) and the head train
    body = sorted(n for n in state if not n.startswith("head."))
    assert len(body) == 4 and all("layer.1." in n and "LayerNorm" in n for n in body)
    trainable = sum(t.numel() for t in state.values())
    assert result.summary["trainable_params"] == trainable
    assert result.summary["method"] == "layernorm" and result.summary["algorithm"] == "damped-avg"
    assert result.series("bytes_up") == [2 * 4 * trainable] * 2  # 2 clients, fp32
    assert len(result.rounds) == 2 and result.summary["rounds_completed"] == 2
    # damping 1 is FedAvg exactly; the default 0.5 moves the state by half as far
    full = api.run(
        _tiny(
            tiny_model_dir,
            **{
                "method.name": "layernorm",
                "algorithm.name": "damped-avg",
                "algorithm.damping": 1.0,
            },
        ),
        out=tmp_path / "one",
    )
    fedavg = api.run(_tiny(tiny_model_dir, **{"method.name": "layernorm"}), out=tmp_path / "avg")
    a, b = (load_file(r.out / "checkpoint" / "global.safetensors") for r in (full, fedavg))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], state[n]) for n in a)


def test_a_users_extensions_run_from_the_cli_and_meet_the_generic_checks(
    plugin: Path, tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "cli"
    argv = run_argv(
        tiny_model_dir,
        out,
        "--plugin",
        str(plugin),
        "--method",
        "layernorm",
        "--algorithm",
        "damped-avg",
        "--set",
        "algorithm.damping=0.25",
        "--codec-up",
        "half",
    )
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    trainable = summary["trainable_params"]
    assert (summary["algorithm"], summary["codec_up"]) == ("damped-avg", "half")
    assert summary["bytes_up_total"] == 2 * 2 * 2 * trainable  # 2 rounds, 2 clients, fp16
    # the user's stage ran after fedpet's: its metric is in every round's line
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["mean_update_norm"] > 0 for r in rows)
    assert api.load_run(out).config.algorithm.damping == 0.25
    capsys.readouterr()
    # the algorithm said it does not allow DP: the generic check refuses it by that
    err = refusal(["--algorithm", "damped-avg", "--dp", "--dp-noise", "1"], capsys)
    assert "algorithm.name = 'damped-avg' is not allowed" in err
    err = refusal(["--algorithm", "damped-avg", "--set", "algorithm.damping=x"], capsys)
    assert "algorithm.damping" in err


def test_a_plugin_that_cannot_be_imported_is_bad_input(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no GPU here')\n")
    err = refused(["run", "--dry-run", "--plugin", str(broken)], capsys, keep=tmp_path)
    assert err.endswith("cannot be imported: RuntimeError: no GPU here") and "--plugin" in err
    assert "ModuleNotFoundError" in refused(
        ["run", "--dry-run", "--plugin", "no_such_module_here"], capsys, keep=tmp_path
    )
    assert "fedpet_plugin_broken" not in sys.modules


@pytest.mark.integration
@pytest.mark.e2e
def test_the_python_api_page_example_runs_on_the_packaged_model(
    tmp_path: Path, monkeypatch
) -> None:
    page = Path(__file__).resolve().parents[1] / "docs" / "guides" / "python-api.md"
    section = page.read_text()
    code = section[section.index("```python\n") + 10 : section.index("```\n", 10)]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "python-api.md", "exec"), scope)
    result, baseline = scope["result"], scope["baseline"]
    assert len(result.rounds) == 2 and result.summary["rounds_completed"] == 2
    assert result.series("bytes_up")[0] == result.summary["bytes_up_total"] / 2 > 0
    assert baseline.summary["centralized"] and baseline.summary["bytes_up_total"] == 0
    assert 0 < result.summary["test_accuracy"] <= 1


def test_a_study_from_a_mapping_returns_each_runs_results(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = {
        "base": tiny_study_base(tiny_model_dir, rounds=1),
        "grid": {"method.name": ["bitfit", "lora"]},
    }
    done = api.study(spec, out=tmp_path / "study")
    assert sorted(done.runs) == ["bitfit", "lora"]
    assert "report.md" in done.files and (done.out / "results.csv").exists()
    for name, run in done.runs.items():
        assert run.config.method.name == name.removeprefix("method=")
        assert run.summary["bytes_up_total"] == run.series("bytes_up")[0] > 0
    bitfit, lora = done.runs["bitfit"], done.runs["lora"]
    assert bitfit.summary["trainable_params"] != lora.summary["trainable_params"]


def test_installed_packages_extend_each_registry_through_entry_points(
    plugin: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import importlib.metadata

    from fedpet.codecs import get_codec

    # a package that declares its extensions instead of registering them on import
    package = tmp_path / "installed"
    package.mkdir()
    lines = PLUGIN.splitlines(keepends=True)
    declared = "".join(x for x in lines if "register_" not in x[:9]) + 'HALF = Floats("fp16")\n'
    (package / "ep_extensions.py").write_text(declared)
    monkeypatch.syspath_prepend(str(package))  # as if it were installed
    points = {
        "fedpet.methods": [("layernorm", "ep_extensions:LayerNormTuning")],
        "fedpet.algorithms": [("damped-avg", "ep_extensions:DampedAvg")],
        "fedpet.codecs": [("half", "ep_extensions:HALF")],
        "fedpet.stages": [("norm-log", "ep_extensions:norm_log")],
    }
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda group: [
            importlib.metadata.EntryPoint(name, value, group) for name, value in points[group]
        ],
    )
    for registry in (METHODS, ALGORITHMS, CODECS, STAGES):
        monkeypatch.setattr(registry, "loaded", False)
    try:
        assert METHODS["layernorm"].name == "layernorm"  # a class is made an instance
        assert ALGORITHMS["damped-avg"].__name__ == "DampedAvg"
        assert get_codec("half").encode({"x": torch.ones(3)}) == b"\x00<" * 3
        assert STAGES["norm-log"].__name__ == "norm_log"
        assert main(["run", "--dry-run", "--method", "layernorm", "--algorithm", "damped-avg"]) == 0
        # a broken entry point is bad input, named
        points["fedpet.algorithms"] = [("broken", "no_such_package:Thing")]
        monkeypatch.setattr(ALGORITHMS, "loaded", False)
        capsys.readouterr()
        err = refused(["run", "--dry-run", "--algorithm", "broken"], capsys, keep=tmp_path)
        assert "entry point 'broken' of fedpet.algorithms cannot be loaded" in err
    finally:
        sys.modules.pop("ep_extensions", None)
