"""Command-line entry points report bad input as one line naming the problem, not as a traceback."""

from __future__ import annotations

import sys

from .preprocess import CorruptImageError

USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError, CorruptImageError, FloatingPointError,
               ConnectionError)


def run_cli(main, argv=None) -> int:
    """Run ``main(argv)``; a user error prints ``error: <message>`` on stderr and exits with status 2."""
    try:
        return main(argv) or 0
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
