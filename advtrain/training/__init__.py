"""Training: the LightningModule, schedules, checkpoint I/O and callbacks."""

from advtrain.training.checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from advtrain.training.module import AdversarialModule

__all__ = ["AdversarialModule", "AtomicCheckpointIO", "atomic_torch_save"]
