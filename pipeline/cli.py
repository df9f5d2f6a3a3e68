"""Command-line entry points report bad input as one line naming the problem, not as a traceback."""

from __future__ import annotations

import argparse
import os
import sys

import torch

from .data.preprocess import CorruptImageError
from .training.checkpoints import CheckpointWriteError

# the --device of every command that runs a network: the GPU when there is one
DEFAULT_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def device_argument(name: str) -> str:
    """argparse type of --device: a torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ...)."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(f"{name!r} is not a torch device ({error})") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise argparse.ArgumentTypeError(f"{name!r}: torch sees {torch.cuda.device_count()} CUDA device(s) here")
    return name

def default_threads() -> int:
    """Torch threads of a command that runs a network: ``OMP_NUM_THREADS`` where it is set (one per process when
    several share the cores: threads competing for a core run far slower), else every core."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else os.cpu_count() or 1


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, ``prog: error: message (see --help)``, not a usage dump; help keeps
    the description's line breaks."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, CorruptImageError,
               FloatingPointError, ConnectionError, CheckpointWriteError)


def run_cli(main, argv=None) -> int:
    """Run ``main(argv)``; a user error prints ``error: <message>`` on stderr and exits with status 2."""
    try:
        return main(argv) or 0
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
