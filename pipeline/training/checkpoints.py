"""Training checkpoints that are never half-written: save to a temporary folder, then rename; resume from the
newest one that reads back."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError

PREFIX = "checkpoint-"
logger = logging.getLogger(__name__)


# what loading a truncated or incomplete checkpoint raises (safetensors headers, torch.load of .bin files, JSON)
UNREADABLE = (OSError, ValueError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError, SafetensorError)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions); the previous checkpoints are intact."""


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (``checkpoint-<step>``) in ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
             and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def resolve_checkpoint(output_dir: str | os.PathLike, value: str) -> Path | None:
    """``"latest"`` -> newest checkpoint of output_dir (None if there is none); otherwise a checkpoint folder."""
    if value == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(value)
    if not path.is_dir():
        path = Path(output_dir) / value
    if not path.is_dir() or not path.name.startswith(PREFIX):
        raise FileNotFoundError(f"checkpoint folder not found: {value}")
    return path


def remove_stale_temporaries(output_dir: str | os.PathLike) -> None:
    """Delete the temporary folders of checkpoint saves that a kill interrupted (never resumed from)."""
    output_dir = Path(output_dir)
    if output_dir.is_dir():
        for stale in output_dir.glob(f".{PREFIX}*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)


def remove_checkpoint(checkpoint: Path) -> None:
    """Delete a checkpoint folder, first renamed (one atomic step) to a temporary that ``list_checkpoints`` never
    sees, so that a kill midway leaves a stale temporary (``remove_stale_temporaries``), never a partial checkpoint."""
    doomed = checkpoint.with_name(f".{checkpoint.name}.removing.tmp")
    if doomed.exists():
        shutil.rmtree(doomed)
    os.replace(checkpoint, doomed)
    shutil.rmtree(doomed)


def restore_newest_readable(candidates: list[Path], restore: Callable[[Path], None]) -> Path:
    """``restore(checkpoint)`` for the newest of ``candidates`` (oldest first) that reads back; an unreadable one
    (truncated weights, missing files) is skipped with a warning naming it. Raises when none can be read."""
    for checkpoint in reversed(candidates):
        try:
            restore(checkpoint)
            return checkpoint
        except UNREADABLE as error:
            logger.warning("%s is unreadable (%s: %s); trying the checkpoint before it", checkpoint,
                           type(error).__name__, str(error).splitlines()[0] if str(error) else "")
    raise ValueError(f"none of the checkpoints {[c.name for c in candidates]} could be read back")


def save_checkpoint_atomically(accelerator, output_dir: str, step: int, total_limit: int | None,
                               per_process_files: dict[str, str],
                               main_process_writer: Callable[[Path], None] | None = None) -> Path:
    """accelerate ``save_state`` into ``.checkpoint-<step>.tmp``, add each process's files (and whatever
    ``main_process_writer(folder)`` writes on the main process), rename, prune old ones.

    A kill at any moment leaves either the previous checkpoints or the new complete one, never a partial folder
    that ``--resume_from_checkpoint latest`` could pick up.
    """
    final = Path(output_dir) / f"{PREFIX}{step}"
    temporary = Path(output_dir) / f".{PREFIX}{step}.tmp"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(temporary))
        for name, text in per_process_files.items():
            (temporary / name).write_text(text)
        if main_process_writer is not None and accelerator.is_main_process:
            main_process_writer(temporary)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        kept = list_checkpoints(output_dir)
        raise CheckpointWriteError(error.errno, f"could not write {final.name} in {output_dir} "
                                   f"({error.strerror or error}); "
                                   + (f"{kept[-1].name} is intact" if kept else "no earlier checkpoint exists")
                                   ) from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # a second save at the same step (e.g. on a stop signal): replace it
            remove_checkpoint(final)
        os.replace(temporary, final)
        if total_limit:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                remove_checkpoint(old)
    accelerator.wait_for_everyone()
    return final


def process_state_files(rank: int, states: dict[str, dict]) -> dict[str, str]:
    """The files that carry process ``rank``'s own state in a checkpoint: ``<name>_rank<rank>.json`` per state dict
    (for ``save_checkpoint_atomically(per_process_files=...)``)."""
    return {f"{name}_rank{rank}.json": json.dumps(state) for name, state in states.items()}


def read_process_state(checkpoint: Path, name: str, rank: int, required: bool = False) -> dict | None:
    """The state dict ``name`` that process ``rank`` saved in ``checkpoint``; None when the checkpoint predates it,
    FileNotFoundError (an unreadable checkpoint) when ``required``."""
    path = Path(checkpoint) / f"{name}_rank{rank}.json"
    if not path.is_file() and not required:
        return None
    return json.loads(path.read_text())
