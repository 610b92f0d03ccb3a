"""`python benchmarks/chaos.py [--ticks N] [--kills K] ...`: the fault campaign (`stockpipe chaos`).

A thin wrapper over `flows.chaos`; see its docstring for what runs and what is checked.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.chaos import main  # noqa: E402

if __name__ == "__main__":
    main()
