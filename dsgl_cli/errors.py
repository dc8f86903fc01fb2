"""The one exception type the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations


class DsglError(Exception):
    """A problem the user can fix (bad input, missing file, hopeless setting).

    The message must fit on one line and say what to do. ``exit_code`` 2 marks a usage
    error (bad flag value), 1 everything else.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
