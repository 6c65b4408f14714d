import numpy as np
import pytest

from fedpet.metrics import (
    accuracy,
    binary_f1,
    classification_metrics,
    confusion,
    macro_f1,
    matthews_corrcoef,
)


def test_accuracy_and_macro_f1_against_hand_computation() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 2, 2])
    assert accuracy(preds, labels) == pytest.approx(4 / 6)
    # class 0: tp 2, fp 0, fn 1 -> F1 = 4/5; class 1: tp 1, fp 1, fn 1 -> 1/2;
    # class 2: tp 1, fp 1, fn 0 -> 2/3
    assert macro_f1(preds, labels, 3) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert confusion(preds, labels, 3).tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_single_class_predictions_have_low_macro_f1() -> None:
    labels = np.array([0, 0, 0, 1])
    preds = np.zeros(4, dtype=np.int64)
    assert accuracy(preds, labels) == 0.75
    assert macro_f1(preds, labels, 2) == pytest.approx((6 / 7 + 0) / 2)


def test_binary_f1_and_mcc_against_hand_computation() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    preds = np.array([1, 1, 0, 0, 0, 1, 0, 1])
    # tp 3, fp 1, fn 1, tn 3
    assert binary_f1(preds, labels) == pytest.approx(2 * 3 / (4 + 4))
    assert matthews_corrcoef(preds, labels, 2) == pytest.approx((3 * 3 - 1 * 1) / np.sqrt(4**4))
    metrics = classification_metrics(preds, labels, 2)
    assert set(metrics) == {"accuracy", "macro_f1", "mcc", "f1"}


def test_mcc_multiclass_and_degenerate_cases() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2])
    assert matthews_corrcoef(labels, labels, 3) == pytest.approx(1.0)
    # by hand: c = 4 correct of s = 6; t = p = [2, 2, 2]; preds [0,1,2,0,2,1]
    preds = np.array([0, 1, 2, 0, 2, 1])
    expected = (4 * 6 - 12) / np.sqrt((36 - 12) * (36 - 12))
    assert matthews_corrcoef(preds, labels, 3) == pytest.approx(expected)
    assert matthews_corrcoef(np.zeros(6, dtype=np.int64), labels, 3) == 0.0  # constant: undefined
    assert "f1" not in classification_metrics(preds, labels, 3)
