"""The one progress mechanism: a bar per stage (rich): items done, a fraction so far (the
robust accuracy of an attack stage, the certified accuracy of a certification stage),
elapsed time and ETA. Quiet when stderr is not a terminal or when disabled. The attack
gauntlet, the minimum-norm curve and every certification method draw on it."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class StageProgress:
    """``with StageProgress() as p: p.stage(name, total); p.advance(k, fraction)``.

    Args:
        enabled: ``False`` prints nothing.
        console: Where to draw; default stderr. Nothing is drawn unless it is a terminal
            (a console built with ``force_terminal=True`` always draws).
    """

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        console = console if console is not None else Console(stderr=True)
        self.enabled = bool(enabled) and console.is_terminal
        self._progress = (
            Progress(
                TextColumn("[bold]{task.description:<22}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[label]} {task.fields[value]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
            )
            if self.enabled
            else None
        )
        self._task: TaskID | None = None

    def __enter__(self) -> StageProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def stage(
        self, name: str, total: int, value: float | None = None, label: str = "robust"
    ) -> None:
        """Start the bar of a new stage (an attack, a certification method) over ``total``
        examples; ``label`` names the fraction shown (``robust``, ``certified``)."""
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.stop_task(self._task)
        self._task = self._progress.add_task(
            name, total=max(total, 0), label=label, value=_fmt(value)
        )

    def advance(self, done: int, value: float | None = None) -> None:
        """``done`` more examples of the stage are finished; ``value``: the fraction so far."""
        if self._progress is None or self._task is None:
            return
        self._progress.update(self._task, advance=done, value=_fmt(value))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


__all__ = ["StageProgress"]
