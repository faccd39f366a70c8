"""Training: the LightningModule, schedules, checkpoint I/O and callbacks."""

from advtrain.training.checkpoint_io import AtomicCheckpointIO
from advtrain.training.module import AdversarialModule

__all__ = ["AdversarialModule", "AtomicCheckpointIO"]
