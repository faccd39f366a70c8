"""The 8x8 handwritten digits of scikit-learn (UCI ML digits, 1,797 images), embedded
offline: the default data set of the main job and the tests."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor

from advtrain.data.groups import synthetic_groups
from advtrain.data.tensor_dataset import TensorDataModule


class DigitsDataModule(TensorDataModule):
    """scikit-learn digits as 1x8x8 images in [0, 1] (pixel values / 16).

    The test split is a stratified ``test_fraction`` drawn with ``split_seed`` (fixed,
    independent of the run's seed); validation is carved from the rest.

    A synthetic group attribute (for robust-fairness tests and ``eval.groups=data``):
    with ``group_noise > 0`` every image gets a group id, 0 or 1, and the images of group
    1 carry Gaussian pixel noise of std ``group_noise`` (clipped to [0, 1]), so group 1 is
    harder by construction. ``group_rule="random"`` draws the group of each image with
    probability 1/2 (seeded by ``split_seed``); a label rule (``data.groups``, e.g.
    ``label:0-4``) makes it a function of the label.

    Args:
        test_fraction: Fraction of the 1,797 images held out as the test split.
        split_seed: Seed of the train/test split (and of the synthetic attribute).
        group_noise: Noise std of group 1's images; 0: no group attribute.
        group_rule: ``"random"`` or a label rule of ``advtrain.data.groups``.
        **kwargs: See ``ClassificationDataModule``.
    """

    name = "digits"
    num_classes = 10
    input_shape = (1, 8, 8)

    def __init__(
        self,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        group_noise: float | str = 0.0,
        group_rule: str = "random",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        bunch = load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(bunch.target, dtype=torch.long)
        idx = torch.arange(len(y)).numpy()
        train_idx, test_idx = train_test_split(
            idx, test_size=test_fraction, stratify=y.numpy(), random_state=split_seed
        )
        x, self._groups = synthetic_groups(x, y, group_noise, group_rule, split_seed)
        self._train = (x[train_idx], y[train_idx])
        self._test = (x[test_idx], y[test_idx])
        self._test_idx = torch.as_tensor(test_idx)

    def test_groups(self, limit: int | None = None) -> Tensor | None:
        """The synthetic attribute of the test split (its first ``limit`` examples)."""
        if self._groups is None:
            return None
        groups = self._groups[self._test_idx]
        if self.test_limit is not None:
            groups = groups[: int(self.test_limit)]
        return groups if limit is None else groups[:limit]
