"""The evaluation's progress bars: ``advtrain.core.progress.StageProgress`` (one bar per
attack stage; the certification stages draw on the same object)."""

from __future__ import annotations

from advtrain.core.progress import StageProgress

__all__ = ["StageProgress"]
