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


def binary_f1(preds: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
    """F1 of the positive class (GLUE's F1 for MRPC and QQP)."""
    tp = float(((preds == positive) & (labels == positive)).sum())
    predicted, actual = float((preds == positive).sum()), float((labels == positive).sum())
    return 2 * tp / (predicted + actual) if predicted + actual else 0.0


def matthews_corrcoef(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """Matthews correlation, multiclass form (Gorodkin, 2004); 0 when undefined (GLUE's CoLA)."""
    cm = confusion(preds, labels, num_labels).astype(np.float64)
    n, correct = cm.sum(), np.trace(cm)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    cov = correct * n - predicted @ actual
    denom = np.sqrt((n**2 - predicted @ predicted) * (n**2 - actual @ actual))
    return float(cov / denom) if denom > 0 else 0.0


def classification_metrics(
    preds: np.ndarray, labels: np.ndarray, num_labels: int
) -> dict[str, float]:
    """Accuracy, macro-F1 and Matthews correlation; for two labels also F1 of label 1."""
    metrics = {
        "accuracy": accuracy(preds, labels),
        "macro_f1": macro_f1(preds, labels, num_labels),
        "mcc": matthews_corrcoef(preds, labels, num_labels),
    }
    if num_labels == 2:
        metrics["f1"] = binary_f1(preds, labels)
    return metrics
