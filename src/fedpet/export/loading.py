"""Loading a trained classifier from a run directory or from an export, for inference."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from safetensors.torch import load_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fedpet.algorithms import get_algorithm
from fedpet.config import Config, load_yaml, to_dict
from fedpet.configure import build_config
from fedpet.errors import FedpetError
from fedpet.experiment import initialise_from_task
from fedpet.export.formats import load_encoder, quiet_transformers
from fedpet.methods.base import merge_modules
from fedpet.methods.lora import BaseWeights, corrections, merges_base
from fedpet.model import TextClassifier, build_model, model_path
from fedpet.rundir import load_checkpoint
from fedpet.state import TrainableState, load_, schema, trainable_parameters

EXPORT_FILE = "fedpet.json"
HEAD_FILE = "head.safetensors"
ROUNDS = ("best", "last")
T = TypeVar("T")


@dataclass
class Loaded:
    """A classifier ready for inference, with what it needs to read text.

    ``meta`` holds the task's data section (``data``), the method, the model and the round
    the state is from, as :func:`~fedpet.export.write.export_run` records them.
    """

    model: TextClassifier
    tokenizer: PreTrainedTokenizerBase
    labels: tuple[str, ...]
    max_length: int
    meta: dict[str, Any]


def open_model(path: Path, round_: str = "best") -> Loaded:
    """The classifier in ``path``: an export (its ``fedpet.json``) or a run directory.

    For a run, ``round_`` picks the best validated round's state or the last round's.
    The model is on the CPU, in eval mode, with nothing requiring grad.
    """
    if (path / EXPORT_FILE).is_file():
        loaded = open_export(path)
    elif (path / "config.yaml").is_file():
        loaded = open_run(path, round_)
    else:
        raise FedpetError(
            f"{str(path)!r} is neither a run directory (no config.yaml) nor an export "
            f"(no {EXPORT_FILE}); give one of them"
        )
    loaded.model.eval().requires_grad_(False)
    return loaded


def run_labels(path: Path) -> tuple[str, ...]:
    """The label names a run trained on, from its ``partition.json``."""
    try:
        report = json.loads((path / "partition.json").read_text(encoding="utf-8"))
        return tuple(str(name) for name in report["labels"])
    except (OSError, ValueError, KeyError) as exc:
        raise FedpetError(
            f"run directory {str(path)!r}: partition.json cannot be read "
            f"({exc.__class__.__name__}); it is written before the first round"
        ) from None


def cpu_config(path: Path) -> Config:
    """A run's config, on the CPU whatever device it trained on."""
    return build_config(load_yaml(path / "config.yaml"), [("device", "cpu")])


def run_state(path: Path, round_: str) -> tuple[TrainableState, int]:
    """The global state after the best (or last) round of the run in ``path``, and the round."""
    if round_ not in ROUNDS:
        raise FedpetError(f"--round {round_!r} is not allowed: choose best or last")
    checkpoint = load_checkpoint(path)
    if round_ == "last":
        return checkpoint.tensors["global"], checkpoint.round
    best = int(checkpoint.state["best_round"])
    if best == 0 or not checkpoint.tensors["best"]:
        raise FedpetError(
            f"run directory {str(path)!r}: no round has been validated yet (the checkpoint "
            f"is of round {checkpoint.round}); use --round last"
        )
    return checkpoint.tensors["best"], best


def open_run(path: Path, round_: str) -> Loaded:
    """Rebuild the run's model (same seed, so the same frozen values) and load its state."""
    cfg = cpu_config(path)
    if cfg.data.objective != "classify":
        raise FedpetError(
            f"run {str(path)!r} is generative (data.objective = {cfg.data.objective}): export, "
            "predict and evaluate read classifier runs; a generative run's adapter state is in "
            "its checkpoint"
        )
    labels = run_labels(path)
    state, done = run_state(path, round_)
    with quiet_transformers():
        model, tokenizer = build_model(cfg, len(labels))
    initialise_from_task(cfg, model, tokenizer)
    algorithm = get_algorithm(cfg.algorithm)
    params = {n: p for n, p in trainable_parameters(model).items() if algorithm.trainable(n)}
    merged = corrections(state)
    state = {n: t for n, t in state.items() if not merges_base(n)}
    if dict(schema(state)) != dict(schema(params)):
        raise FedpetError(
            f"run directory {str(path)!r}: its checkpoint does not fit the model that "
            f"config.yaml and the {len(labels)} labels of partition.json describe; were they "
            "edited?"
        )
    load_(params, state)
    merge_modules(model)
    if merged:  # corrected base weights: the export is the merged model, with no adapter
        BaseWeights(model).set_(merged)
        encoder: Any = model.encoder
        model.encoder = encoder.merge_and_unload()
    meta = {
        "method": cfg.method.name,
        "model": cfg.model,
        "data": to_dict(cfg)["data"],
        "round": done,
        "state": round_,
        "run": str(path),
        "merged": bool(merged),
    }
    assert isinstance(model, TextClassifier)
    return Loaded(model, tokenizer, labels, cfg.data.max_length, meta)


def open_export(path: Path) -> Loaded:
    """Load an export with its library (peft, adapters or transformers) and add the head.

    Whatever in it cannot be read (a missing or corrupt file, a label list that does not
    match the head) is refused in one line.
    """
    try:
        meta = json.loads((path / EXPORT_FILE).read_text(encoding="utf-8"))
        labels = tuple(meta["labels"])
        kind, pooling, normalize = meta["format"], meta["pooling"], meta["normalize"]
        if not isinstance(meta["labels"], list) or not all(isinstance(x, str) for x in labels):
            raise ValueError("labels is not a list of names")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FedpetError(
            f"export {str(path)!r}: {EXPORT_FILE} cannot be read ({exc.__class__.__name__}: "
            f"{exc}); write the export again with fedpet export"
        ) from None
    encoder = _read(
        path, f"its {kind} encoder", lambda: load_encoder(kind, path, model_path(meta["model"]))
    )
    config: Any = encoder.config
    hidden = int(getattr(config, "hidden_size", None) or config.dim)
    model = TextClassifier(encoder, hidden, len(labels), pooling, normalize, dropout=0.0)
    head = _read(path, HEAD_FILE, lambda: load_file(str(path / HEAD_FILE)))
    expected, found = (dict(sorted(schema(s))) for s in (model.head.state_dict(), head))
    if found != expected:
        raise FedpetError(
            f"export {str(path)!r}: {HEAD_FILE} holds {found}, but {len(labels)} labels in "
            f"{EXPORT_FILE} need a head of {expected}: were the labels edited? write the "
            "export again with fedpet export"
        )
    model.head.load_state_dict(head)
    tokenizer = _read(path, "its tokenizer", lambda: AutoTokenizer.from_pretrained(str(path)))
    return Loaded(model, tokenizer, labels, int(meta["max_length"]), meta)


def _read(path: Path, what: str, load: Callable[[], T]) -> T:
    """``load()``, or one line naming ``what`` of the export could not be read, and why."""
    try:
        return load()
    except Exception as exc:  # the libraries raise many kinds on a missing or corrupt file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise FedpetError(
            f"export {str(path)!r}: {what} cannot be read ({exc.__class__.__name__}: "
            f"{reason[:200]}); write the export again with fedpet export"
        ) from None
