"""Learning-rate schedules: diffusers' `get_scheduler` plus warmup-stable-decay, and the check that lets a resumed run
change its schedule only where the learning rate continues.

Warmup-stable-decay (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
Durations") holds the learning rate constant and anneals it to zero over the final `num_decay_steps` steps. Unlike
cosine, the constant phase does not need to know the run's length: a long run trained at constant LR can be resumed
with a cooldown once its budget is known.
"""

from __future__ import annotations

import math

from diffusers.optimization import get_scheduler
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

WARMUP_STABLE_DECAY = "warmup_stable_decay"


def warmup_stable_decay_factor(step: int, num_warmup_steps: int, num_decay_steps: int,
                               num_training_steps: int) -> float:
    """Multiplier of the base LR: linear warmup 0 → 1, constant 1, then linear decay 1 → 0 ending at
    `num_training_steps`."""
    if step < num_warmup_steps:
        return step / max(1, num_warmup_steps)
    decay_start = num_training_steps - num_decay_steps
    if step < decay_start:
        return 1.0
    return max(0.0, (num_training_steps - step) / max(1, num_decay_steps))


def build_lr_scheduler(name: str, optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
                       num_decay_steps: int | None = None) -> LambdaLR:
    """`name` is a diffusers schedule or "warmup_stable_decay" (which needs `num_decay_steps`)."""
    if name != WARMUP_STABLE_DECAY:
        if num_decay_steps is not None:
            raise ValueError(f"--lr_decay_steps applies only to --lr_scheduler {WARMUP_STABLE_DECAY}, not {name}")
        return get_scheduler(name, optimizer, num_warmup_steps=num_warmup_steps,
                             num_training_steps=num_training_steps)
    if num_decay_steps is None or not 0 < num_decay_steps <= num_training_steps - num_warmup_steps:
        raise ValueError(f"--lr_scheduler {WARMUP_STABLE_DECAY} needs --lr_decay_steps between 1 and max_train_steps "
                         f"- lr_warmup_steps = {num_training_steps - num_warmup_steps}, got {num_decay_steps}")
    return LambdaLR(optimizer, lambda step: warmup_stable_decay_factor(step, num_warmup_steps, num_decay_steps,
                                                                       num_training_steps))


def check_resumed_learning_rate(scheduler: LambdaLR, step: int) -> None:
    """After loading a checkpoint into a scheduler built from this run's flags: its learning rate at the checkpoint
    must be the one the checkpoint trained with, so a changed schedule (e.g. a cooldown added on resume) continues
    the run instead of jumping."""
    saved = scheduler.get_last_lr()
    rebuilt = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    if not all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15) for a, b in zip(saved, rebuilt)):
        raise ValueError(f"the learning-rate schedule given for this resume has lr {rebuilt[0]:.6g} at step {step}, "
                         f"but the checkpoint trained with lr {saved[0]:.6g}: a schedule changed on resume must "
                         f"continue from the checkpoint's learning rate (e.g. {WARMUP_STABLE_DECAY} with its decay "
                         f"starting at or after step {step})")
