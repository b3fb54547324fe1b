"""What the fault scripts share: the tests directory on sys.path (for
``helpers``, importable by reference in every worker), and a way to report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def report(**facts: Any) -> None:
    """One JSON line on stdout, flushed at once: the test reads it while we run."""
    print(json.dumps(facts), flush=True)
