"""Stopping a training run cleanly or at once: stop signals, and a watchdog on the data stream.

The first SIGINT/SIGTERM asks the loop to checkpoint after the current step and exit; a second one exits immediately.
That is safe because checkpoints are written to a temporary folder and renamed only when complete
(``pipeline.training.checkpoints``): an interrupted save is never resumed from. The watchdog turns a data stream that
stops delivering (a Hub dataset without network, a stalled file system) into an error instead of a silent hang.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class StopSignals:
    """SIGINT/SIGTERM handling for a training loop that polls ``requested`` after every step.

    Args:
        exit: called with the exit status (128 + signal number) on the second signal; ``os._exit`` by default,
            which ends the process even in the middle of a checkpoint save or a blocked read.
    """

    def __init__(self, exit: Callable[[int], None] = os._exit):
        self.requested = False
        self._exit = exit

    def install(self) -> StopSignals:
        signal.signal(signal.SIGTERM, self.handle)
        signal.signal(signal.SIGINT, self.handle)
        return self

    def handle(self, signum: int, _frame=None) -> None:
        if self.requested:
            logger.warning("signal %d again: exiting now without a new checkpoint; resume from the last complete "
                           "one with --resume_from_checkpoint latest", signum)
            self._exit(128 + signum)
            return
        self.requested = True
        logger.info("signal %d: checkpointing after this step, then exiting (send it again to exit at once)", signum)


class DataWatchdog:
    """Calls ``on_stall`` once when a single wait for data (a ``waiting()`` block) lasts longer than ``minutes``.

    Args:
        minutes: the longest acceptable wait for one batch; 0 disables the watchdog.
        on_stall: what to do; by default log the likely causes and end the process with status 2.
        poll_seconds: how often the background thread looks.
    """

    def __init__(self, minutes: float, on_stall: Callable[[], None] | None = None, poll_seconds: float = 5.0):
        self.minutes = minutes
        self.on_stall = on_stall or self._exit_with_message
        self._since: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(poll_seconds,), daemon=True)

    def start(self) -> DataWatchdog:
        if self.minutes > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()

    def __enter__(self) -> DataWatchdog:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @contextlib.contextmanager
    def waiting(self):
        self._since = time.monotonic()
        try:
            yield
        finally:
            self._since = None

    def _watch(self, poll_seconds: float) -> None:
        while not self._done.wait(min(poll_seconds, 60 * self.minutes / 4)):
            since = self._since
            if since is not None and time.monotonic() - since > 60 * self.minutes:
                self.on_stall()
                return

    def _exit_with_message(self) -> None:
        logger.error("no training batch for %g minutes: the data stream is stuck (a Hub dataset without network, a "
                     "stalled or unmounted data folder?); exiting. Fix the data source and resume with "
                     "--resume_from_checkpoint latest (or raise --data_timeout_minutes)", self.minutes)
        os._exit(2)
