"""Small logit processors composed into the sampling chain, and a seedable per-row sampler.

Every processor maps ``logits (B, V)`` to new logits of the same shape; a removed token gets ``-inf``.
``history`` is a ``(B, W)`` tensor of recent token ids, right-aligned and padded with ``-1``.
The chain ``build_chain(cfg)`` is: temperature, repetition penalty, [pitch prior], top-k, top-p, probability
floor; the grammar mask (``AllowedMask``) is put in front of it by the generation loop, one mask per step.
The pitch prior (``PitchPrior``) is only there when the loop gives one (bar infilling of a pitched track with
``keep_key`` or ``keep_register`` above 0); without it the chain is exactly the paper's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from midirwkv.config import SampleConfig
from midirwkv.errors import BadRequestError

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

    Only the last ``window`` entries of ``history`` count; each seen token is penalised once. ``spared``
    (``(V,)`` bool) marks ids never penalised: with ``repetition_spare`` those are the ids that write a
    position, a pitch or a duration, which loops and ostinati repeat on purpose.
    """

    def __init__(self, penalty: float, window: int, spared: Tensor | None = None):
        self.penalty = penalty
        self.window = window
        self.spared = spared

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        if self.penalty == 1.0 or self.window == 0 or history.numel() == 0:
            return logits
        recent = history[:, -self.window:]                       # (B, W)
        vocab = logits.shape[-1]
        index = torch.where(recent >= 0, recent, vocab)          # padding goes to a spare column
        seen = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
        seen.scatter_(1, index, True)
        seen = seen[:, :vocab]                                   # (B, V)
        if self.spared is not None:
            seen &= ~self.spared[:vocab].to(seen.device)
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


KEY_CLASSES = 7
"""Pitch classes that make the key of a context for ``PitchPrior`` (as the evaluation's out-of-key share)."""
MIN_REGISTER_STD = 3.0
"""Semitones: the register Gaussian of ``PitchPrior`` is never narrower than this, so a context of one
repeated note (std 0) or a narrow line does not forbid every other pitch."""


@dataclass(frozen=True)
class PitchTable:
    """Which pitches each model id writes, as flat ``(id, pitch)`` pairs; a BPE id may write several.

    Only ``Pitch_k`` base tokens count (never ``PitchDrum_k``): the prior is for pitched tracks.
    """

    ids: Tensor          # (M,) long: the model id of each pair
    pitches: Tensor      # (M,) long: the MIDI pitch of each pair
    size: int            # V, the width of the logits

    @classmethod
    def build(cls, vocab, size: int | None = None) -> PitchTable:
        """Read every id of ``vocab`` as base tokens; ``size`` (the model's output width) may exceed it."""
        names: dict[int, str] = {}
        ids, pitches = [], []
        for tid in range(vocab.size):
            for b in vocab.unbpe([tid]):
                if b not in names:
                    names[b] = vocab.name(b)
                kind, _, value = names[b].partition("_")
                if kind == "Pitch":
                    ids.append(tid)
                    pitches.append(int(value))
        return cls(torch.tensor(ids, dtype=torch.long), torch.tensor(pitches, dtype=torch.long),
                   max(size or 0, vocab.size))


class PitchPrior:
    """Add a fixed ``(V,)`` bias that pulls sampled pitches toward the key and register of the context.

    Built once per prompt by ``fit`` from the pitches of the target track's context bars
    (``music.infill.Prompt.context_pitches``). For one pitch ``k`` the bias is
    ``keep_key * min(0, log(p[k % 12] / p7)) + keep_register * -((k - mean) / std)**2 / 2``: ``p`` is the
    add-one smoothed pitch-class histogram of the context and ``p7`` its ``KEY_CLASSES``-th largest value, so
    the seven most used classes (the key) all get 0 and only the rarer ones are pushed down (a class never
    heard gets ``log(1 / (c7 + 1))``, ``c7`` the seventh largest count). Judging the key as a set, not by how
    often each class occurs, keeps the pitch variety inside the key: a bias proportional to the histogram made
    the fills repeat the few most common classes (pitch-class entropy 1.2 bits against the originals' 2.1 on
    the validation grid, reports/sampling). ``mean`` and ``std`` are the context's, ``std`` at least
    ``MIN_REGISTER_STD`` (the log-density of that Gaussian, 0 at the mean). An id that writes several
    pitches (BPE) gets the MEAN of its pitches' biases, so a merged chord is judged per note, not
    penalised once per note; an id without pitches gets exactly 0. It sits after temperature and the
    repetition penalty (its strength is in nats whatever the temperature) and before the cut-offs, so
    top-k, top-p and the floor see the biased distribution.
    """

    def __init__(self, bias: Tensor):
        self.bias = bias                                         # (V,)

    @classmethod
    def fit(cls, table: PitchTable, context_pitches: Sequence[int], keep_key: float,
            keep_register: float) -> PitchPrior:
        """The prior of one prompt; ``context_pitches`` must not be empty."""
        assert len(context_pitches) > 0, "a pitch prior needs context pitches"
        ctx = torch.tensor([int(k) for k in context_pitches], dtype=torch.float64)
        grid = torch.arange(128, dtype=torch.float64)            # (128,) every MIDI pitch
        counts = torch.bincount(ctx.long() % 12, minlength=12).double() + 1.0
        ref = torch.sort(counts, descending=True).values[KEY_CLASSES - 1]
        key = torch.log(counts / ref).clamp(max=0.0)             # (12,) 0 for the key's classes
        std = max(float(ctx.std(unbiased=False)), MIN_REGISTER_STD)
        register = -0.5 * ((grid - ctx.mean()) / std) ** 2      # (128,) 0 at the mean
        per_pitch = keep_key * key[grid.long() % 12] + keep_register * register      # (128,)
        zeros = torch.zeros(table.size, dtype=torch.float64)
        total = zeros.index_add(0, table.ids, per_pitch[table.pitches])                 # (V,)
        count = zeros.index_add(0, table.ids, torch.ones(len(table.ids), dtype=torch.float64))   # (V,)
        bias = (total / count.clamp(min=1.0)).float()           # (V,) mean over each id's pitches
        assert bool(torch.isfinite(bias).all()), "the strengths must be finite (SampleConfig checks)"
        return cls(bias)

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        return logits + self.bias.to(logits.device, logits.dtype)     # no copy when they match


def build_chain(cfg: SampleConfig, pitch_prior: PitchPrior | None = None,
                musical: Tensor | None = None) -> list[LogitProcessor]:
    """The sampling chain of ``cfg`` (without the per-step grammar mask), with ``pitch_prior`` when given.

    ``musical`` (``(V,)`` bool: the ids that write a position, pitch or duration, ``Grammar.musical``) is
    what ``cfg.repetition_spare`` exempts from the repetition penalty; it is needed only then.
    """
    prior: list[LogitProcessor] = [] if pitch_prior is None else [pitch_prior]
    if cfg.repetition_spare and musical is None and cfg.repetition_penalty != 1.0:
        raise BadRequestError("repetition_spare needs the vocabulary's musical ids", argument="musical",
                              value=None, fix="pass Grammar.musical (the generation loop does)")
    return [
        Temperature(cfg.temperature),
        RepetitionPenalty(cfg.repetition_penalty, cfg.repetition_window,
                          musical if cfg.repetition_spare else None),
        *prior,
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
