"""Lightning's checkpoint writes through the project's atomic writer, so a crash never
leaves a half-written ``last.ckpt`` or ``best.ckpt``."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from advtrain.core.io import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO plugin whose saves are atomic."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"storage_options={storage_options!r} is not supported by AtomicCheckpointIO"
            )
        atomic_torch_save(checkpoint, path)
