from pathlib import Path

import pytest
from helpers import refused

from fedpet.config import Config, load_yaml, parse_override, to_dict
from fedpet.configure import build_config, resolve
from fedpet.errors import FedpetError


def test_defaults_validate_and_resolve_the_method_learning_rates() -> None:
    cfg = resolve(build_config())
    assert cfg.method.name == "lora" and cfg.data.partition == "dirichlet"
    assert cfg.train.lr == 2e-3 and cfg.train.head_lr == 3e-2
    full = resolve(build_config({}, [("method.name", "full")]))
    assert full.train.lr == 5e-5


def test_yaml_then_overrides_in_order() -> None:
    cfg = build_config(
        {"seed": 3, "method": {"name": "bitfit", "r": 4}},
        [("method.name", "lora"), ("method.r", 16), ("federation.rounds", "7")],
    )
    assert cfg.seed == 3 and cfg.method.name == "lora"
    assert cfg.method.r == 16 and cfg.federation.rounds == 7
    cfg = build_config({}, [("method.target_modules", "query,key")])
    assert cfg.method.target_modules == ("query", "key")


def test_each_method_and_algorithm_takes_its_own_options() -> None:
    from fedpet.algorithms.fedprox import FedProxOptions
    from fedpet.methods.adapter import AdapterOptions

    cfg = build_config({"method": {"name": "adapter", "reduction_factor": 8}})
    assert type(cfg.method) is AdapterOptions and cfg.method.reduction_factor == 8
    assert to_dict(cfg)["method"] == {
        "name": "adapter",
        "adapter": "pfeiffer",
        "reduction_factor": 8,
    }
    cfg = build_config({}, [("algorithm.name", "fedprox"), ("algorithm.mu", 0.5)])
    assert type(cfg.algorithm) is FedProxOptions and cfg.algorithm.mu == 0.5
    assert set(to_dict(cfg)["algorithm"]) == {"name", "server_lr", "fedrs", "mu"}
    # another method's option is ignored (a study's base may set LoRA's rank for all runs);
    # one that no method has is an error that lists the method's own
    assert not hasattr(build_config({}, [("method.name", "bitfit"), ("method.r", 4)]).method, "r")
    with pytest.raises(FedpetError, match=r"method\.rr: unknown field; allowed here: lora_a"):
        build_config({}, [("method.rr", 4)])
    with pytest.raises(FedpetError, match=r"algorithm\.mu = -1\.0 is not allowed: a number >= 0"):
        build_config({}, [("algorithm.name", "fedprox"), ("algorithm.mu", -1)])


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("train.lr=0.001") == ("train.lr", 0.001)
    assert build_config({}, [parse_override("train.lr=1e-3")]).train.lr == 1e-3
    assert parse_override("method.target_modules=[query, value]") == (
        "method.target_modules",
        ["query", "value"],
    )
    with pytest.raises(FedpetError, match="KEY=VALUE"):
        parse_override("no-equals-sign")


def test_yes_no_on_and_off_are_words_and_only_true_and_false_booleans(tmp_path: Path) -> None:
    cfg = build_config({}, [parse_override("data.options=[yes, no, on, Off, y, N]")])
    assert cfg.data.options == ("yes", "no", "on", "Off", "y", "N")
    assert build_config({}, [parse_override("train.group_by_length=true")]).train.group_by_length
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  options: [yes, no]\ntrain:\n  group_by_length: True\n")
    from_file = build_config(load_yaml(path))
    assert from_file.data.options == ("yes", "no") and from_file.train.group_by_length
    with pytest.raises(FedpetError, match=r"train.group_by_length = 'yes': expected true or false"):
        build_config({}, [parse_override("train.group_by_length=yes")])


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("method.name", "lorax", "method.name = 'lorax' is not allowed: choose one of"),
        ("data.task", "imdb", "data.task = 'imdb'"),
        ("data.partition", "random", "data.partition = 'random'"),
        ("data.alpha", 0, "data.alpha = 0.0 is not allowed: a number > 0"),
        ("data.alpha", -1, "data.alpha = -1.0"),
        ("federation.rounds", 0, "federation.rounds = 0 is not allowed"),
        ("federation.clients_per_round", 101, "an integer from 1 to federation.clients (100)"),
        ("train.optimizer", "adam", "choose one of adamw, sgd"),
        ("train.batch_size", "big", "expected an integer"),
        ("train.nope", 1, "train.nope: unknown field"),
        ("federation", 3, "federation: is a section"),
    ],
)
def test_bad_values_name_the_field_value_and_what_is_allowed(key, value, message) -> None:
    with pytest.raises(FedpetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config({}, [(key, value)])


def test_saved_config_round_trips(tmp_path: Path) -> None:
    import yaml

    cfg = resolve(build_config({}, [("method.target_modules", ["query"]), ("seed", 9)]))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert build_config(load_yaml(path)) == cfg


def test_unreadable_and_malformed_yaml(tmp_path: Path) -> None:
    with pytest.raises(FedpetError, match="cannot read"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(FedpetError, match="not valid YAML"):
        load_yaml(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("- 1\n- 2\n")
    with pytest.raises(FedpetError, match="must hold a mapping"):
        load_yaml(scalar)


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.seed = 1  # type: ignore[misc]


def test_default_clients_per_round_caps_at_the_number_of_clients() -> None:
    assert build_config({}, [("federation.clients", 4)]).federation.clients_per_round == 4
    assert build_config({}, [("federation.clients", 40)]).federation.clients_per_round == 10
    with pytest.raises(FedpetError, match=r"federation\.clients_per_round = 5"):
        build_config({}, [("federation.clients", 4), ("federation.clients_per_round", 5)])


@pytest.mark.parametrize(
    "overrides,message",
    [
        ([], "runtime = 'simulation' is not allowed: with secagg.enabled, a Flower runtime"),
        ([("algorithm.name", "median")], "algorithm.name = 'median' is not allowed"),
        ([("federation.max_update_norm", 1.0)], "federation.max_update_norm = 1.0 is not"),
        ([("federation.clients_per_round", 1)], "at least 2 with secagg.enabled"),
        ([("secagg.shares", 0)], "secagg.shares = 0.0 is not allowed"),
    ],
)
def test_secure_aggregation_refuses_what_needs_single_updates(overrides, message) -> None:
    base = [("secagg.enabled", True)]
    if overrides:
        base.append(("runtime", "flower-sim"))
    with pytest.raises(FedpetError, match=message):
        build_config({}, base + overrides)
    build_config({}, [*base, ("runtime", "flower-sim")])  # fedavg on Flower is allowed


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("federation.short_round", "retry", "short_round = 'retry' is not allowed: skip on"),
        ("federation.round_deadline", 5, "round_deadline = 5.0 is not allowed: null on"),
        ("faults.client_failure_rate", 0.3, "runtime = 'flower-sim' is not allowed: simulation"),
    ],
)
def test_simulated_faults_and_retries_are_refused_on_flower(key, value, message) -> None:
    with pytest.raises(FedpetError, match=message):
        build_config({}, [("runtime", "flower-sim"), (key, value)])
    build_config({}, [(key, value)])  # the in-process simulation has them


@pytest.mark.parametrize("filled", ["true", "train.lr", "[1, device]"])
def test_a_config_file_whose_filled_is_not_a_list_of_names_is_one_line(
    tmp_path: Path, filled: str, capsys
) -> None:

    path = tmp_path / "c.yaml"
    path.write_text(f"filled: {filled}\n")
    err = refused(["run", "--dry-run", "--config", str(path)], capsys, keep=tmp_path)
    assert "is not allowed: a list of the field names" in err
