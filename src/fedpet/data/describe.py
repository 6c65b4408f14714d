"""What a partition looks like: ``partition.json``, a one-line summary, and two PNGs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedpet.config import Config
from fedpet.data.partition import ALPHA_PARTITIONS, label_counts, label_skew
from fedpet.data.splits import Task
from fedpet.files import atomic_write
from fedpet.rundir import PARTITION_HEATMAP, PARTITION_HISTOGRAM


def describe_partition(
    task: Task,
    clients: list[np.ndarray],
    cfg: Config,
    client_info: Callable[[int], dict[str, Any]] = lambda client: {},
    tests: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Split rule and sizes, scheme, label skew, and per client its size and label counts.

    ``client_info`` adds what the algorithm assigns each client (its LoRA rank, say);
    ``tests`` are the clients' local test splits, whose sizes, label counts and examples
    (indices into train) are recorded with them.
    """
    counts = label_counts(task.train.labels, clients, task.num_labels)
    held = label_counts(task.train.labels, tests, task.num_labels) if tests else None
    d = cfg.data
    groups = task.train.groups
    natural = not cfg.centralized and d.partition == "natural" and groups is not None
    names = np.unique(groups) if natural and groups is not None else None
    per_client = [
        {
            "id": k,
            **({} if names is None else {"name": str(names[k])}),
            "size": int(c.sum()),
            "label_counts": c.tolist(),
            **({} if held is None or tests is None else local_test(tests[k], held[k])),
            **client_info(k),
        }
        for k, c in enumerate(counts)
    ]
    return {
        "task": task.name,
        "split": {
            "rule": task.split_rule,
            "split_seed": d.split_seed,
            "train": len(task.train),
            "validation": len(task.validation),
            "test": len(task.test),
        },
        "scheme": "centralized" if cfg.centralized else d.partition,
        "alpha": d.alpha,
        "client_test_fraction": d.client_test_fraction,
        "labels": list(task.label_names),
        "label_skew": label_skew(counts),
        "clients": per_client,
    }


def local_test(indices: np.ndarray, counts: np.ndarray) -> dict[str, Any]:
    """A client's local test split as ``partition.json`` records it."""
    return {
        "test_size": int(counts.sum()),
        "test_label_counts": counts.tolist(),
        "test_examples": indices.tolist(),
    }


def summary_line(report: dict[str, Any]) -> str:
    """Clients, sizes (min/median/max) and label skew in one line."""
    sizes = np.array([c["size"] for c in report["clients"]])
    alpha = f" (alpha {report['alpha']:g})" if report["scheme"] in ALPHA_PARTITIONS else ""
    return (
        f"{report['task']} · {report['scheme']}{alpha}: "
        f"{len(sizes)} clients, sizes min {sizes.min()} / median {np.median(sizes):g} / "
        f"max {sizes.max()}, label skew {report['label_skew']:.3f} "
        "(mean total-variation distance from the global label mix; 0 = iid)"
    )


def plot_partition(report: dict[str, Any], directory: Path) -> list[Path]:
    """Write a clients x labels heatmap and a client-size histogram; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.array([c["label_counts"] for c in report["clients"]], dtype=float)
    sizes = counts.sum(axis=1)
    shares = counts / np.maximum(sizes, 1)[:, None]
    shaped = report["scheme"] in ALPHA_PARTITIONS  # alpha means nothing to iid, shards, ...
    alpha = f", alpha {report['alpha']:g}" if shaped else ""
    title = f"{report['task']}: {report['scheme']} partition{alpha}"

    fig, ax = plt.subplots(figsize=(max(6.0, min(14.0, 0.12 * len(sizes) + 4)), 3.2))
    image = ax.imshow(
        shares.T, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
    )
    ax.set_yticks(range(len(report["labels"])), report["labels"])
    ax.set_xlabel(f"client (0-{len(sizes) - 1})")
    ax.set_ylabel("label")
    ax.set_title(f"{title}\nlabel share of each client (label skew {report['label_skew']:.3f})")
    fig.colorbar(image, ax=ax, label="share of the client's examples")
    fig.tight_layout()
    heatmap = directory / PARTITION_HEATMAP
    atomic_write(heatmap, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(sizes, bins=min(40, max(5, len(sizes) // 5)), color="tab:blue", edgecolor="white")
    ax.set_xlabel("examples per client")
    ax.set_ylabel("clients")
    ax.set_title(f"{title}\nclient sizes: min {sizes.min():g}, max {sizes.max():g}")
    fig.tight_layout()
    histogram = directory / PARTITION_HISTOGRAM
    atomic_write(histogram, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return [heatmap, histogram]
