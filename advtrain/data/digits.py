"""The 8x8 handwritten digits of scikit-learn (UCI ML digits, 1,797 images), embedded
offline: the default data set of the main job and the tests."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from advtrain.data.tensor_dataset import TensorDataModule


class DigitsDataModule(TensorDataModule):
    """scikit-learn digits as 1x8x8 images in [0, 1] (pixel values / 16).

    The test split is a stratified ``test_fraction`` drawn with ``split_seed`` (fixed,
    independent of the run's seed); validation is carved from the rest.

    Args:
        test_fraction: Fraction of the 1,797 images held out as the test split.
        split_seed: Seed of the train/test split.
        **kwargs: See ``ClassificationDataModule``.
    """

    name = "digits"
    num_classes = 10
    input_shape = (1, 8, 8)

    def __init__(self, test_fraction: float = 0.2, split_seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        bunch = load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(bunch.target, dtype=torch.long)
        idx = torch.arange(len(y)).numpy()
        train_idx, test_idx = train_test_split(
            idx, test_size=test_fraction, stratify=y.numpy(), random_state=split_seed
        )
        self._train = (x[train_idx], y[train_idx])
        self._test = (x[test_idx], y[test_idx])
