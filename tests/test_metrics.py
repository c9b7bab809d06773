"""Classification metrics on cases computed by hand."""

import math

import pytest
import torch

from cnnkit.train.metrics import (
    ClassificationMeter,
    confusion_matrix,
    per_class_accuracy,
    topk_accuracy,
    topk_correct,
    topk_error,
)

# Rows rank the classes; targets chosen so top-1 hits rows 0 and 3, top-2 adds row 1,
# top-3 adds row 2, and row 4's target is last.
LOGITS = torch.tensor([
    [5.0, 1.0, 0.0, -1.0],  # order 0,1,2,3  target 0: top-1
    [0.0, 3.0, 2.0, -1.0],  # order 1,2,0,3  target 2: top-2
    [1.0, 0.0, 3.0, 2.0],   # order 2,3,0,1  target 0: top-3
    [0.0, 0.0, 0.0, 9.0],   # order 3,...    target 3: top-1
    [4.0, 3.0, 2.0, 1.0],   # order 0,1,2,3  target 3: top-4
])
TARGET = torch.tensor([0, 2, 0, 3, 3])


def test_topk_counts():
    assert topk_correct(LOGITS, TARGET, (1, 2, 3, 4)) == [2, 3, 4, 5]
    assert topk_accuracy(LOGITS, TARGET, 1) == pytest.approx(0.4)
    assert topk_error(LOGITS, TARGET, 2) == pytest.approx(0.4)


def test_topk_clamps_to_class_count():
    assert topk_correct(LOGITS, TARGET, (5, 10)) == [5, 5]
    assert topk_error(LOGITS, TARGET, 5) == 0.0


def test_bad_shapes_and_empty():
    with pytest.raises(ValueError, match="logits"):
        topk_correct(LOGITS[0], TARGET[:1])
    with pytest.raises(ValueError, match="target"):
        topk_correct(LOGITS, TARGET[:3])
    assert math.isnan(topk_accuracy(LOGITS[:0], TARGET[:0]))


def test_confusion_matrix_and_per_class_accuracy():
    predicted = LOGITS.argmax(1)  # [0, 1, 2, 3, 0]
    confusion = confusion_matrix(predicted, TARGET, 4)
    expected = torch.tensor([[1, 0, 1, 0],   # class 0: right once, taken for 2 once
                             [0, 0, 0, 0],   # class 1: no examples
                             [0, 1, 0, 0],   # class 2: taken for 1
                             [1, 0, 0, 1]])  # class 3: right once, taken for 0 once
    assert torch.equal(confusion, expected)
    accuracy = per_class_accuracy(confusion)
    assert accuracy[0] == 0.5 and math.isnan(accuracy[1]) and accuracy[2] == 0
    assert accuracy[3] == 0.5


def test_meter_accumulates_batches():
    meter = ClassificationMeter(4, topk=2)
    meter.update(LOGITS[:2], TARGET[:2], loss_sum=torch.tensor(1.0))
    meter.update(LOGITS[2:], TARGET[2:], loss_sum=2.0)
    result = meter.compute()
    assert result["count"] == 5
    assert result["loss"] == pytest.approx(3.0 / 5)
    assert result["top1_acc"] == pytest.approx(0.4) and result["top2_err"] == pytest.approx(0.4)
    assert torch.equal(meter.confusion, confusion_matrix(LOGITS.argmax(1), TARGET, 4))
