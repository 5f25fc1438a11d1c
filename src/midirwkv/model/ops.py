"""Small pieces every RWKV-7 path shares (training forward, torch decode, native kernels): no imports above torch."""

from __future__ import annotations

import math

from torch import Tensor, nn

DECAY_SCALE = math.exp(-0.5)
"""The model's per-step log decay is ``-exp(-0.5) * sigmoid(.)``: decay in (0.545, 1), RWKV-LM's soft clamp."""


def applied_weight(module: nn.Module) -> Tensor:
    """The weight a linear layer applies (LoRA layers add their low-rank update)."""
    merged = getattr(module, "merged_weight", None)
    return (merged() if callable(merged) else module.weight).detach()
