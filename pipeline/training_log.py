"""The run's bookkeeping that must survive resumes: cumulative CPU time, and a JSONL log of the training curve."""

from __future__ import annotations

import json
import os
import time


class TrainingClock:
    """CPU seconds and wall seconds of this process, cumulative over every resumed segment of a run."""

    def __init__(self, counted_from_step: int = 0):
        self.previous_cpu = self.previous_wall = 0.0
        self.counted_from_step = counted_from_step  # > 0 when resumed from a checkpoint that had no clock
        self._cpu_start, self._wall_start = time.process_time(), time.monotonic()

    def state_dict(self) -> dict:
        return {"cpu_seconds": self.cpu_seconds, "wall_seconds": self.wall_seconds,
                "counted_from_step": self.counted_from_step}

    def load_state_dict(self, state: dict) -> None:
        self.previous_cpu, self.previous_wall = float(state["cpu_seconds"]), float(state["wall_seconds"])
        self.counted_from_step = int(state.get("counted_from_step", 0))
        self._cpu_start, self._wall_start = time.process_time(), time.monotonic()

    @property
    def cpu_seconds(self) -> float:
        return self.previous_cpu + time.process_time() - self._cpu_start

    @property
    def wall_seconds(self) -> float:
        return self.previous_wall + time.monotonic() - self._wall_start


class LossMeter:
    """Mean training loss since the last log record."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def add(self, value: float) -> None:
        self.total, self.count = self.total + value, self.count + 1

    def pop_mean(self) -> float | None:
        mean = self.total / self.count if self.count else None
        self.total, self.count = 0.0, 0
        return mean


def append_record(path: str, record: dict) -> None:
    """One JSON line per record; the file is the run's training curve (steps, images, CPU-hours, loss, FID)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
