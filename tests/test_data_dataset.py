"""ImageDataset: checked tensors and prefix subsets."""

import pytest
import torch

from cnnkit.data import ImageDataset


def _dataset(n=5):
    return ImageDataset(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n), "abcde")


def test_subset_takes_the_first_examples():
    dataset = _dataset()
    assert dataset.subset(None) is dataset and dataset.subset(9) is dataset
    assert dataset.subset(3).labels.tolist() == [0, 1, 2]
    assert len(dataset.subset(0)) == 0


def test_subset_refuses_a_negative_count():
    with pytest.raises(ValueError, match="count: expected None or an int >= 0, got -2"):
        _dataset().subset(-2)
