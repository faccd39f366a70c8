"""``python scripts/collect.py SWEEP_DIR``: the same as ``advtrain-collect SWEEP_DIR``."""

from __future__ import annotations

import sys

from advtrain.cli.collect import main

if __name__ == "__main__":
    sys.exit(main())
