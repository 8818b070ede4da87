"""Where rlservice keeps its files."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Runs, embedded stores and caches live here: $RLSERVICE_HOME, else ~/.rlservice."""
    return Path(os.environ.get("RLSERVICE_HOME", Path.home() / ".rlservice"))
