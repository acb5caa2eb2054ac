"""The one exception type for mistakes a user can make (bad model, bad file, bad option)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


class LatentMASError(Exception):
    """An error the user can fix; the CLI prints its message without a traceback."""


class OptionError(LatentMASError):
    """A run option with a value it cannot take. `option` is the field's name (`handoff.x` for a
    handoff's own option); the CLI names it as its flag, the server as the request field."""

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"{option}: {reason}")
        self.option, self.reason = option, reason

    @property
    def flag(self) -> str:
        return "--" + self.option.rsplit(".", 1)[-1].replace("_", "-")


def run_script(main: Callable[[], int | None]) -> NoReturn:
    """Run a benchmark script's `main` as the CLI runs a command: a LatentMASError (an
    unknown model, a missing part, a malformed file) is one line on stderr and exit 2."""
    try:
        code = main()
    except LatentMASError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code or 0)
