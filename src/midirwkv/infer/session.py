"""InfillSession: the prefix-state cache.

The prompt is read once (chunked parallel prefill, flat memory at any length) up to and including
``FillBar_Start``; the state there is kept. The first bar's header and controls are fed by the loop like
every other bar's, so asking for more variations, other sampling settings or other controls for the span
costs only the tokens of the span itself.

``TrackSession`` does the same for track infilling: the other tracks are read once up to ``Infill_Track``;
each call then reads ``Track_Start Program <track controls>`` (a dozen tokens) and lets the loop write the
track's bars, so more variations, other sampling settings or other track controls cost only the track.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence

import torch

from midirwkv.config import SampleConfig
from midirwkv.errors import BadRequestError
from midirwkv.infer.generate import GeneratedSpan, Generator, Grammar
from midirwkv.infer.rank import best_of

SEED_SPACE = 2**63
"""Seeds of the random generators stay below this (a variation's fills derive theirs from its seed)."""
PREFILL_CHUNK = 1024
"""Tokens per parallel prefill call: bounds the activations and logits held at once, whatever the prompt."""


class InfillSession:
    """Holds a model, a prompt and the state after the prompt's prefix; samples variations from it."""

    def __init__(self, model, vocab, prompt, *, is_drum: bool = False, grammar: Grammar | None = None,
                 prefill_chunk: int = PREFILL_CHUNK, init_state=None):
        if prefill_chunk < 1:
            raise BadRequestError("prefill_chunk must be positive", argument="prefill_chunk", value=prefill_chunk,
                                  fix="use e.g. 1024")
        self.model = model
        self.vocab = vocab
        self.prompt = prompt
        self.headers = [list(h) for h in prompt.bar_headers]
        self.controls = [list(c) for c in prompt.bar_controls]
        self.context_pitches = [] if is_drum else list(prompt.context_pitches)     # for the pitch prior
        opening = self.headers[0] + self.controls[0]
        ids = list(prompt.ids)
        if ids[len(ids) - len(opening):] != opening or ids[len(ids) - len(opening) - 1] != vocab.fillbar_start:
            raise BadRequestError("the prompt must end with FillBar_Start, the first bar header and its controls",
                                  argument="prompt", value=ids[-len(opening) - 1:],
                                  fix="build it with music.infill.build_prompt")
        self.prefix = ids[: len(ids) - len(opening)]
        self.prefill_chunk = prefill_chunk
        self.generator = Generator(model, vocab, is_drum, grammar)
        start = time.perf_counter()
        self.state = prefill(model, self.prefix, prefill_chunk, init_state)
        self.prefill_seconds = time.perf_counter() - start

    @property
    def n_bars(self) -> int:
        """Number of bars each variation fills."""
        return len(self.headers)

    def generate(self, variations: int = 1, sample: SampleConfig | None = None, seed: int | None = None,
                 controls: Sequence[Sequence[int]] | None = None,
                 checker: Callable[[int, list[int]], int] | None = None,
                 forced: Sequence[Sequence[int] | None] | None = None) -> list[GeneratedSpan]:
        """Sample ``variations`` fills of the span as one batch, from the cached prefix state.

        Variation ``i`` uses seed ``seed + i`` (a random seed when ``seed`` is None), so a result is
        reproducible from its reported seed. ``controls`` replaces the control ids of every span bar.
        ``sample.candidates`` > 1 samples that many fills per variation in the same batch and keeps the one the
        model finds most likely (:func:`midirwkv.infer.rank.best_of`); ``sampled`` then counts them all.
        ``sample.keep_key`` / ``sample.keep_register`` weigh the pitch prior of the prompt's context pitches.
        ``forced`` keeps bars inside the span unchanged (see :meth:`Generator.run`).
        """
        if not isinstance(variations, int) or variations < 1:
            raise BadRequestError("variations must be a positive integer", argument="variations", value=variations,
                                  fix="use 1 or more")
        cfg = sample or SampleConfig()
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little") >> 1
        bar_controls = self.controls if controls is None else [list(c) for c in controls]
        if len(bar_controls) != self.n_bars:
            raise BadRequestError("need one control list per span bar", argument="controls", value=len(bar_controls),
                                  fix=f"give {self.n_bars} control lists")
        seeds = [seed + i for i in range(variations)]
        k = cfg.candidates
        if k == 1:
            return self.generator.run(self.state, self.headers, bar_controls, cfg, seeds, checker,
                                      context_pitches=self.context_pitches, forced=forced)
        # variation i samples its k fills with seeds ((seed + i) * k + j) mod 2**63, so its reported seed redoes it
        fill_seeds = [(s * k + j) % SEED_SPACE for s in seeds for j in range(k)]
        outs = self.generator.run(self.state, self.headers, bar_controls, cfg, fill_seeds, checker,
                                  context_pitches=self.context_pitches, forced=forced)
        kept = []
        for i, s in enumerate(seeds):
            group = outs[i * k:(i + 1) * k]
            best = group[best_of(self.model, self.vocab, self.state, [g.tokens for g in group])]
            kept.append(dataclasses.replace(best, seed=s, sampled=sum(g.sampled for g in group)))
        return kept


@torch.inference_mode()
def prefill(model, ids: Sequence[int], chunk: int = PREFILL_CHUNK, init_state=None):
    """The batch-1 state after reading ``ids``, in parallel chunks of at most ``chunk`` tokens.

    Reading starts from ``init_state`` (a batch-1 ``State``, e.g. a style's learned state; never modified),
    else from ``model.init_state(1)``.
    """
    state = model.init_state(1) if init_state is None else init_state.clone()
    for lo in range(0, len(ids), chunk):
        idx = torch.tensor([list(ids[lo: lo + chunk])], dtype=torch.long)     # (1, T)
        _, state = model(idx, state=state, return_state=True)
    return state


class TrackSession:
    """Track infilling from a cached state: the other tracks read once, up to and including ``Infill_Track``."""

    def __init__(self, model, vocab, prompt, *, grammar: Grammar | None = None, prefill_chunk: int = PREFILL_CHUNK,
                 init_state=None):
        if prefill_chunk < 1:
            raise BadRequestError("prefill_chunk must be positive", argument="prefill_chunk", value=prefill_chunk,
                                  fix="use e.g. 1024")
        self.model = model
        self.vocab = vocab
        self.prompt = prompt
        self.is_drum = bool(prompt.is_drum)
        self.program = int(prompt.program)
        self.headers = [list(h) for h in prompt.bar_headers]
        self.controls = [list(c) for c in prompt.bar_controls] or [[] for _ in self.headers]
        ids = list(prompt.ids)
        first = self.headers[0] if self.headers else []
        cut = len(ids) - 1 - ids[::-1].index(vocab.infill_track) if vocab.infill_track in ids else -1
        program_id = vocab.id(f"Program_{self.program}")
        if (not first or ids[len(ids) - len(first):] != first or cut < 0
                or ids[cut + 1: cut + 3] != [vocab.track_start, program_id]):
            raise BadRequestError("the prompt must end with Infill_Track Track_Start Program <controls> and the "
                                  "first bar header", argument="prompt", value=ids[-16:],
                                  fix="build it with music.infill.build_track_prompt")
        self.prefix = ids[: cut + 1]
        self.track_controls = ids[cut + 3: len(ids) - len(first)]
        self.prefill_chunk = prefill_chunk
        width = getattr(getattr(model, "cfg", None), "vocab_size", None)
        base = grammar or Grammar.build(vocab, self.is_drum, width)
        self.generator = Generator(model, vocab, self.is_drum, base.for_track(vocab))
        start = time.perf_counter()
        self.state = prefill(model, self.prefix, prefill_chunk, init_state)
        self.prefill_seconds = time.perf_counter() - start

    @property
    def n_bars(self) -> int:
        """Number of bars each variation writes (every bar of the score)."""
        return len(self.headers)

    def generate(self, variations: int = 1, sample: SampleConfig | None = None, seed: int | None = None,
                 track_controls: Sequence[int] | None = None, require_notes: bool = True,
                 seeds: Sequence[int] | None = None) -> list[GeneratedSpan]:
        """Write the track ``variations`` times as one batch, from the cached state.

        Variation ``i`` uses seed ``seed + i`` (or ``seeds[i]`` when given). ``track_controls`` (ids of
        track-control tokens) replaces the prompt's; ``require_notes`` keeps a variation from leaving every
        bar empty.
        """
        if not isinstance(variations, int) or variations < 1:
            raise BadRequestError("variations must be a positive integer", argument="variations", value=variations,
                                  fix="use 1 or more")
        cfg = sample or SampleConfig()
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little") >> 1
        controls = self.track_controls if track_controls is None else [int(i) for i in track_controls]
        bad = [i for i in controls if not self.vocab.is_control(i)]
        if bad:
            raise BadRequestError("track_controls must be control token ids", argument="track_controls", value=bad,
                                  fix="use vocab.ids(TrackControls(...).to_tokens(is_drum))")
        head = [self.vocab.track_start, self.vocab.id(f"Program_{self.program}"), *controls]
        state = _read(self.model, self.state, head)
        if seeds is not None:
            if len(seeds) != variations:
                raise BadRequestError("one seed per variation is needed", argument="seeds", value=len(seeds),
                                      fix=f"give {variations} seeds")
            seeds = [int(v) for v in seeds]
        else:
            seeds = [seed + i for i in range(variations)]
        return self.generator.run(state, self.headers, self.controls, cfg, seeds, None, empty_runs=True,
                                  require_notes=require_notes)


@torch.inference_mode()
def _read(model, state, ids: Sequence[int]):
    """The batch-1 state after feeding ``ids`` from ``state`` in one parallel call (``state`` is kept)."""
    _, new = model(torch.tensor([list(ids)], dtype=torch.long), state=state, return_state=True)
    return new
