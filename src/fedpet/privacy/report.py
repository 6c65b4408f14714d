"""``leakage.md``: one table of every ``fedpet attack`` result found under a directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedpet.errors import FedpetError
from fedpet.files import atomic_write

ATTACK_FILE = "attack.json"
LEAKAGE_FILE = "leakage.md"


def find_attacks(path: Path) -> list[dict[str, Any]]:
    """The attack results in ``path`` and in the folders below it, by folder name."""
    found = []
    for file in sorted(path.rglob(ATTACK_FILE)):
        try:
            found.append(json.loads(file.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise FedpetError(f"{file}: not a readable attack result ({exc})") from None
    return found


def _dp(dp: dict[str, Any] | None) -> str:
    if dp is None:
        return "-"
    return f"z={dp['noise_multiplier']:g}, C={dp['clip']:g}, std {dp['noise_std']:.3g}"


def _labels(batches: list[dict[str, Any]]) -> str:
    known = [b["labels_right"] for b in batches if b["labels_right"] is not None]
    return f"{sum(known)}/{len(known)}" if known else "-"


def leakage_markdown(attacks: list[dict[str, Any]]) -> str:
    """The table: per attack, the training state, what the update went through, the scores.

    Rows go by task, method and training state, the plain fp32 update first.
    """
    lines = [
        "# Leakage",
        "",
        "Token precision, recall and F1 of the text recovered from one client's update "
        "(distinct tokens, special tokens left out), mean over the attacked batches. "
        "State: the global state the client started from. Labels: batches whose labels "
        "gradient matching read right from the head's bias. Prior F1: guessing as many "
        "tokens as were recovered, the most frequent of the training texts; an attack that "
        "does not beat it has learnt nothing from the update.",
        "",
        "| task | method | state | codec | DP noise | batch | examples | recovery "
        "| precision | recall | token F1 | prior F1 | labels | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(
        attacks,
        key=lambda a: (
            a["task"],
            a["method"],
            a["rounds_trained"],
            a["codec"] != "fp32",
            a["codec"],
            a["dp"] is not None,
            a["batch"],
        ),
    )
    for a in order:
        state = f"round {a['rounds_trained']}" if a["rounds_trained"] else "init"
        lines.append(
            f"| {a['task']} | {a['method']} | {state} | {a['codec']} | {_dp(a['dp'])} "
            f"| {a['batch']} | {a['examples']} | {a['recovery']} | {a['precision']:.2f} "
            f"| {a['recall']:.2f} | {a['f1']:.2f} | {a['prior_f1']:.2f} "
            f"| {_labels(a['batches'])} | {a['seconds']:.0f} |"
        )
    return "\n".join([*lines, ""])


def write_leakage(path: Path) -> list[str]:
    """Write ``leakage.md`` in ``path`` if any attack result lies under it; what was written."""
    attacks = find_attacks(path)
    if not attacks:
        return []
    text = leakage_markdown(attacks)
    atomic_write(path / LEAKAGE_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return [LEAKAGE_FILE]
