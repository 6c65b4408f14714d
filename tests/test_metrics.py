import numpy as np
import pytest

from fedpet.metrics import accuracy, confusion, macro_f1


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
