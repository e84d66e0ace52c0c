"""Learning-rate schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


@dataclass
class WarmupCosine:
    """LR factor: linear warmup to 1 over ``warmup_steps``, then cosine decay to ``min_ratio`` at
    ``total_steps`` (held there after). A callable object rather than a closure so that
    ``LambdaLR.state_dict()`` records its settings (it keeps a callable object's ``__dict__``; plain functions
    are saved as None)."""

    warmup_steps: int
    total_steps: int
    min_ratio: float = 0.01

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps  # the first step already gets a non-zero LR
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.01) -> LambdaLR:
    """A LambdaLR applying :class:`WarmupCosine` to every parameter group (call ``.step()`` once per step)."""
    if warmup_steps < 0 or total_steps < 1 or not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"bad schedule: warmup {warmup_steps}, total {total_steps}, min_ratio {min_ratio}")
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_ratio))
