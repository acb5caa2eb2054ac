"""The one exception type for mistakes a user can make (bad model, bad file, bad option)."""


class LatentMASError(Exception):
    """An error the user can fix; the CLI prints its message without a traceback."""
