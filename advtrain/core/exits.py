"""Early-exit points of a device loop: where a loop may check (one host sync) whether its
rows are finished, instead of checking after every step."""

from __future__ import annotations


def exit_points(n: int, every: int) -> set[int]:
    """Iterations (of ``n``) after which a loop may drop finished rows or stop: 0, 1, 3,
    7, ... (most rows finish early), then every ``every``-th. Each costs one host sync;
    the iterations between them cost none."""
    return {i for i in range(n) if (i + 1) & i == 0 or (i + 1) % every == 0}


__all__ = ["exit_points"]
