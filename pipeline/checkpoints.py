"""Training checkpoints that are never half-written: save to a temporary folder, then rename."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

PREFIX = "checkpoint-"


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
    accelerator.save_state(str(temporary))
    for name, text in per_process_files.items():
        (temporary / name).write_text(text)
    if main_process_writer is not None and accelerator.is_main_process:
        main_process_writer(temporary)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # a second save at the same step (e.g. on a stop signal): replace it
            shutil.rmtree(final)
        os.replace(temporary, final)
        if total_limit:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
