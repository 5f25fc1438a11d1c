"""Small logit processors composed into the sampling chain, and a seedable per-row sampler.

Every processor maps ``logits (B, V)`` to new logits of the same shape; a removed token gets ``-inf``.
``history`` is a ``(B, W)`` tensor of recent token ids, right-aligned and padded with ``-1``.
The chain ``build_chain(cfg)`` is: temperature, repetition penalty, top-k, top-p, probability floor; the
grammar mask (``AllowedMask``) is put in front of it by the generation loop, one mask per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from midirwkv.config import SampleConfig

NEG_INF = float("-inf")


class LogitProcessor(Protocol):
    """Anything that rewrites a batch of logits given the recent tokens of each row."""

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor: ...


class AllowedMask:
    """Keep only the tokens marked True in ``allowed (B, V)`` (the grammar guard of one step)."""

    def __init__(self, allowed: Tensor):
        self.allowed = allowed

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        return logits.masked_fill(~self.allowed, NEG_INF)


class Temperature:
    """Divide the logits by ``t``: below 1 sharpens, above 1 flattens."""

    def __init__(self, t: float):
        self.t = t

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        return logits if self.t == 1.0 else logits / self.t


class RepetitionPenalty:
    """The usual rule: divide the positive logits and multiply the negative ones of recently seen tokens.

    Only the last ``window`` entries of ``history`` count; each seen token is penalised once.
    """

    def __init__(self, penalty: float, window: int):
        self.penalty = penalty
        self.window = window

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        if self.penalty == 1.0 or self.window == 0 or history.numel() == 0:
            return logits
        recent = history[:, -self.window:]                       # (B, W)
        vocab = logits.shape[-1]
        index = torch.where(recent >= 0, recent, vocab)          # padding goes to a spare column
        seen = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
        seen.scatter_(1, index, True)
        seen = seen[:, :vocab]                                   # (B, V)
        penalised = torch.where(logits > 0, logits / self.penalty, logits * self.penalty)
        return torch.where(seen, penalised, logits)


class TopK:
    """Keep the ``k`` largest logits of each row."""

    def __init__(self, k: int):
        self.k = k

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        if self.k <= 0 or self.k >= logits.shape[-1]:
            return logits
        kth = torch.topk(logits, self.k, dim=-1).values[:, -1:]  # (B, 1)
        return logits.masked_fill(logits < kth, NEG_INF)


class TopP:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least ``p``."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        if self.p >= 1.0:
            return logits
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the tokens before it already reach p; the first token always stays
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= self.p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        return logits.masked_fill(drop, NEG_INF)


class ProbabilityFloor:
    """Drop tokens whose probability is below ``floor``; the most likely token of a row always stays."""

    def __init__(self, floor: float):
        self.floor = floor

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        if self.floor <= 0:
            return logits
        probs = torch.softmax(logits, dim=-1)
        keep = (probs >= self.floor) | (probs == probs.max(dim=-1, keepdim=True).values)
        return logits.masked_fill(~keep, NEG_INF)


def build_chain(cfg: SampleConfig) -> list[LogitProcessor]:
    """The sampling chain of ``cfg`` (without the per-step grammar mask)."""
    return [
        Temperature(cfg.temperature),
        RepetitionPenalty(cfg.repetition_penalty, cfg.repetition_window),
        TopK(cfg.top_k),
        TopP(cfg.top_p),
        ProbabilityFloor(cfg.min_prob),
    ]


def apply_chain(chain: Sequence[LogitProcessor], logits: Tensor, history: Tensor) -> Tensor:
    """Run ``logits`` through every processor of ``chain`` in order."""
    for processor in chain:
        logits = processor(logits, history)
    return logits


def sample_rows(logits: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """Draw one token per row, row ``b`` from its own generator, so each row is reproducible on its own.

    Returns a ``(B,)`` LongTensor. A row whose logits are all ``-inf`` is an internal error.
    """
    probs = torch.softmax(logits.float(), dim=-1)                # (B, V)
    assert not torch.isnan(probs).any(), "a sampling row has no allowed token"
    out = torch.empty(probs.shape[0], dtype=torch.long)
    for b, gen in enumerate(generators):
        out[b] = torch.multinomial(probs[b], 1, generator=gen)[0]
    return out


def history_tensor(rows: Sequence[Sequence[int]], window: int) -> Tensor:
    """The last ``window`` ids of each row, right-aligned in a ``(B, W)`` tensor padded with ``-1``."""
    width = max(1, window)
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        tail = list(row)[-width:] if window > 0 else []
        if tail:
            out[b, width - len(tail):] = torch.tensor(tail, dtype=torch.long)
    return out
