"""``python bench/run.py [options]`` (or ``python -m bench.run``): see ``--help``."""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.orchestrate import main  # noqa: E402

if __name__ == "__main__":
    main()
