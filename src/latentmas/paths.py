"""Where latentmas keeps converted models and realignment matrices."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$LATENTMAS_CACHE`, else `$XDG_CACHE_HOME/latentmas`, else `~/.cache/latentmas`."""
    if env := os.environ.get("LATENTMAS_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "latentmas"
