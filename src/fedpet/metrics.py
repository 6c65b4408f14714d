"""Classification metrics computed from predicted and true labels."""

from __future__ import annotations

import numpy as np


def confusion(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> np.ndarray:
    """num_labels x num_labels counts, rows = true label, columns = prediction."""
    return np.bincount(labels * num_labels + preds, minlength=num_labels**2).reshape(
        num_labels, num_labels
    )


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    """Share of correct predictions."""
    return float((preds == labels).mean()) if len(labels) else 0.0


def macro_f1(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """Unweighted mean over classes of F1 (a class never true nor predicted scores 0)."""
    cm = confusion(preds, labels, num_labels).astype(np.float64)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def classification_metrics(
    preds: np.ndarray, labels: np.ndarray, num_labels: int
) -> dict[str, float]:
    """Accuracy and macro-F1."""
    return {"accuracy": accuracy(preds, labels), "macro_f1": macro_f1(preds, labels, num_labels)}
