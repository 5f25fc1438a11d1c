"""Helpers shared by the model tests (import as ``from model_helpers import ...``; pytest puts tests/ on the path)."""

from __future__ import annotations

import torch

from midirwkv.config import ModelConfig
from midirwkv.model import RWKV7


def perturbed_model(cfg: ModelConfig, seed: int = 0) -> RWKV7:
    """An RWKV7 of ``cfg`` in eval mode with every weight perturbed by N(0, 0.1): the RWKV-LM init zeroes some
    projections, which would hide errors in the paths they feed."""
    torch.manual_seed(seed)
    model = RWKV7(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()
