"""The recurrent infilling loop: control schedule, grammar guard, exact bar count.

After the prompt (which ends with ``FillBar_Start``), every requested bar is opened by the loop itself: it
FEEDS the bar's real header (``Bar_None TimeSig_x/y`` from ``Prompt.bar_headers``) and its controls
(``Prompt.bar_controls``), then samples the bar's notes. The model closes a bar by sampling ``Bar_None``
(or ``FillBar_End`` on the last bar); the loop then opens the next bar, or stops after the last one, so a
span always holds exactly the requested bars and the controls are always fed right after a header, never
after notes. A grammar guard masks everything that cannot occur at that point of a bar or that the splice
would drop: track and program tokens, padding, a second header, tempo changes, BPE tokens that merge a bar
start with notes, out-of-order positions, a note over the per-bar cap, an empty bar when the bar was asked to
hold notes, a run of empty bars nobody asked for.

Track infilling runs the same loop with ``Track_End`` as the last bar's end token (``Grammar.for_track``),
no per-bar controls (the track controls sit in the prompt), runs of empty bars allowed (a track may rest
for a while) and, when the track was asked to hold notes, no way to finish the last bar while every bar
so far was empty.
"""

from __future__ import annotations

from collections import abc
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise

import torch
from torch import Tensor

from midirwkv.config import SampleConfig
from midirwkv.errors import BadRequestError, GenerationError
from midirwkv.infer.processors import (
    AllowedMask,
    PitchPrior,
    PitchTable,
    apply_chain,
    build_chain,
    history_tensor,
    sample_rows,
)

# grammar states inside a bar (REMI order: Position [Tempo] Pitch Velocity Duration ...)
S_START, S_POS, S_TEMPO, S_PITCH, S_VEL, S_NOTE = range(6)
N_STATES = 6
POSITIONS_PER_BEAT = 12          # the tokenizer's largest position resolution (REFERENCE.md)


@dataclass
class Grammar:
    """Per-token tables of the in-bar grammar for one vocabulary and one kind of track (drum or not).

    For each id: ``next_state[s, id]`` (-1 = not allowed from state ``s``), first and last position inside
    the token (-1 = none), the number of notes it starts. Bar ends (``Bar_None``, ``FillBar_End``) are kept
    out of the tables; the loop allows them explicitly.
    """

    next_state: Tensor       # (N_STATES, V) long
    first_pos: Tensor        # (V,) long
    last_pos: Tensor         # (V,) long
    notes: Tensor            # (V,) long
    bar: int
    fill_end: int
    musical: Tensor | None = None   # (V,) bool: writes a Position, a pitch or a Duration (repetition_spare)

    @classmethod
    def build(cls, vocab, is_drum: bool, size: int | None = None) -> Grammar:
        """Read every id of ``vocab`` as its base tokens and run the bar grammar over them.

        ``size`` (the model's output width) may exceed ``vocab.size``; the extra ids are never allowed.
        """
        size = max(size or 0, vocab.size)
        next_state = torch.full((N_STATES, size), -1, dtype=torch.long)
        first_pos = torch.full((size,), -1, dtype=torch.long)
        last_pos = torch.full((size,), -1, dtype=torch.long)
        notes = torch.zeros(size, dtype=torch.long)
        pitch_kind = "PitchDrum" if is_drum else "Pitch"
        names: dict[int, tuple[str, str]] = {}
        tokens: list[list[tuple[str, str]]] = []
        for tid in range(vocab.size):
            parts = []
            for b in vocab.unbpe([tid]):
                if b not in names:
                    kind, _, value = vocab.name(b).partition("_")
                    names[b] = (kind, value)
                parts.append(names[b])
            tokens.append(parts)
        velocity = any(kind == "Velocity" for kind, _ in names.values())
        for tid, parts in enumerate(tokens):
            positions = [int(v) for k, v in parts if k == "Position"]
            if positions:
                if any(b <= a for a, b in pairwise(positions)):
                    continue                                     # positions must rise inside a token
                first_pos[tid], last_pos[tid] = positions[0], positions[-1]
            notes[tid] = sum(1 for k, _ in parts if k == pitch_kind)
            for start in range(N_STATES):
                next_state[start, tid] = _run(start, parts, pitch_kind, velocity)
        musical = torch.zeros(size, dtype=torch.bool)
        musical[:len(tokens)] = torch.tensor([any(k in ("Position", "Pitch", "PitchDrum", "Duration") for k, _ in parts)
                                              for parts in tokens], dtype=torch.bool)
        return cls(next_state, first_pos, last_pos, notes, vocab.bar, vocab.fillbar_end, musical)

    def for_track(self, vocab) -> Grammar:
        """The same tables with ``Track_End`` closing the last bar (track infilling); shares the tensors."""
        return replace(self, fill_end=vocab.track_end)


def _run(state: int, tokens: Sequence[tuple[str, str]], pitch_kind: str, velocity: bool) -> int:
    """Run the in-bar grammar from ``state`` over base tokens ``(kind, value)``; -1 when a step is illegal.

    ``Tempo`` is never legal: the training data has tempo changes inside bars, but a fill cannot use them
    (the splice keeps the file's own tempo map), so a generated one would only waste a token and bend what
    the model writes next. The same holds for every id that merges a Tempo with other tokens.
    """
    for kind, _ in tokens:
        if kind == "Position" and state in (S_START, S_TEMPO, S_NOTE):
            state = S_POS
        elif kind == pitch_kind and state in (S_POS, S_TEMPO, S_NOTE):
            state = S_PITCH
        elif kind == "Velocity" and velocity and state == S_PITCH:
            state = S_VEL
        elif kind == "Duration" and state == (S_VEL if velocity else S_PITCH):
            state = S_NOTE
        else:
            return -1
    return state


def bar_positions(vocab, header: Sequence[int]) -> int:
    """Number of positions in a bar from its header ``Bar_None TimeSig_x/y`` (the beat is 1/y)."""
    for tid in header:
        kind, _, value = vocab.name(tid).partition("_")
        if kind == "TimeSig":
            numerator = int(value.split("/")[0])
            return numerator * POSITIONS_PER_BEAT
    raise BadRequestError("a bar header has no TimeSig token", argument="bar_headers", value=list(header),
                          fix="build the prompt with music.infill.build_prompt")


def requested_density(vocab, control_ids: Sequence[int]) -> int | None:
    """The note-density value asked for a bar (18 for ``18+``), or None when it is left free."""
    for tid in control_ids:
        kind, _, value = vocab.name(tid).partition("_")
        if kind == "ACBarNoteDensity":
            return int(value.rstrip("+"))
    return None


def check_forced(forced: Sequence[Sequence[int] | None] | None, n_bars: int) -> list:
    """``forced`` as one entry per bar (None: generate the bar), checked; ``[None] * n_bars`` when not given."""
    if forced is None:
        return [None] * n_bars
    if isinstance(forced, (str, bytes)) or not isinstance(forced, Sequence) or len(forced) != n_bars:
        raise BadRequestError("need one entry per span bar in forced (None for a bar to generate)",
                              argument="forced", value=forced if not isinstance(forced, Sequence) else len(forced),
                              fix=f"give {n_bars} entries")
    if forced[0] is not None or forced[-1] is not None:
        raise BadRequestError("the first and the last bar of a span must be generated", argument="forced",
                              value=[i for i, f in enumerate(forced) if f is not None],
                              fix="keep bars only between generated bars (shrink the span to its first and "
                                  "last generated bar)")
    return [None if f is None else [int(t) for t in f] for f in forced]


@dataclass
class GeneratedSpan:
    """One variation of one span: exactly the requested bars, as base ids (header included, no controls)."""

    bars: list[list[int]]
    """Base ids per bar: ``Bar_None TimeSig_x/y`` then the notes (what ``music.infill.splice`` takes)."""
    tokens: list[int]
    """Every model id fed after the prompt prefix (headers, controls and sampled tokens)."""
    sampled: int
    """How many tokens were sampled (the cost of this variation)."""
    attempts: list[int]
    """Attempts per bar (1 = first try)."""
    seed: int
    """The seed of this variation's random generator."""
    mismatches: list[int] = field(default_factory=list)
    """Per bar, how many requested controls the kept attempt missed (filled when a checker is given)."""


@dataclass
class _Row:
    """Bookkeeping of one variation while the batch runs."""

    queue: list[int]
    bar: int = 0
    state: int = S_START
    pos: int = -1
    notes: int = 0
    bar_tokens: list[int] = field(default_factory=list)
    bars: list[list[int]] = field(default_factory=list)
    fed: list[int] = field(default_factory=list)           # committed ids fed (bars closed so far + headers)
    history: list[int] = field(default_factory=list)       # committed sampled ids (repetition penalty)
    sampled: int = 0
    attempts: list[int] = field(default_factory=list)
    mismatches: list[int] = field(default_factory=list)
    tries: int = 1
    limit_hits: int = 0
    prev_empty: bool = False
    has_notes: bool = False                # some closed bar of this row holds notes
    done: bool = False
    snapshot: tuple | None = None          # (state rows, token) just before the bar's last forced token
    best: tuple | None = None              # (mismatch, bar tokens, state rows after the body) of this bar
    forced: list = field(default_factory=list)   # per bar: BPE body ids of a kept bar, or None (generated)


class Generator:
    """Runs the batched recurrent loop from a prefilled state. Used by ``InfillSession`` and ``generate``."""

    def __init__(self, model, vocab, is_drum: bool, grammar: Grammar | None = None):
        self.model = model
        self.vocab = vocab
        self.is_drum = is_drum
        self.width = getattr(getattr(model, "cfg", None), "vocab_size", None)
        self.grammar = grammar or Grammar.build(vocab, is_drum, self.width)
        self._pitch_table: PitchTable | None = None

    @torch.inference_mode()
    def run(self, prefix_state, headers: Sequence[Sequence[int]], controls: Sequence[Sequence[int]],
            cfg: SampleConfig, seeds: Sequence[int], checker=None, *, empty_runs: bool = False,
            require_notes: bool = False, context_pitches: Sequence[int] = (),
            forced: Sequence[Sequence[int] | None] | None = None) -> list[GeneratedSpan]:
        """Fill ``len(headers)`` bars for each seed from ``prefix_state`` (batch 1, after ``FillBar_Start``).

        ``checker(bar_index, base_ids) -> int`` (number of missed controls) enables control re-sampling.
        ``empty_runs`` lets a bar with no density asked stay empty after an empty bar (track infilling);
        ``require_notes`` forbids ending the last bar while every earlier bar of the row was empty.
        ``context_pitches`` (the target track's pitches around the span) feed the pitch prior when
        ``cfg.keep_key`` or ``cfg.keep_register`` is above 0 (never on drums).
        ``forced`` (one entry per bar) keeps bars unchanged inside the span: an entry holds the BPE ids of a
        bar's body (``vocab.bpe`` of its notes), read after the bar's header and controls instead of being
        sampled (teacher forcing), so the generated bars around it see it and lead into it; ``None`` entries
        are generated. The first and the last bar must be generated (a kept bar at either end belongs outside
        the span). A kept bar is returned as its header plus its notes, with 0 attempts.
        """
        steps = self.iter_run(prefix_state, headers, controls, cfg, seeds, checker, empty_runs=empty_runs,
                              require_notes=require_notes, context_pitches=context_pitches, forced=forced)
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                return stop.value

    @torch.inference_mode()
    def iter_run(self, prefix_state, headers: Sequence[Sequence[int]], controls: Sequence[Sequence[int]],
                 cfg: SampleConfig, seeds: Sequence[int], checker=None, *, empty_runs: bool = False,
                 require_notes: bool = False, context_pitches: Sequence[int] = (),
                 forced: Sequence[Sequence[int] | None] | None = None
                 ) -> abc.Generator[tuple[int, int, list[int]], None, list[GeneratedSpan]]:
        """The loop of :meth:`run` as a generator: yields ``(row, bar index, base ids)`` as each bar is kept.

        A bar is yielded as soon as its closing token (``Bar_None`` / ``FillBar_End``) is sampled and, with
        a ``checker``, its control re-sampling is over, before the next model step; the generator returns
        the ``GeneratedSpan`` list that :meth:`run` returns (the same ids for the same seeds: the yields add
        no model call and no random draw). Arguments as in :meth:`run`.
        """
        n_bars = len(headers)
        if n_bars == 0 or len(controls) != n_bars:
            raise BadRequestError("need one control list per requested bar", argument="bar_controls",
                                  value=len(controls), fix=f"give {n_bars} control lists")
        kept_bars = check_forced(forced, n_bars)
        batch = len(seeds)
        vocab = self.vocab
        chain = build_chain(cfg, self.pitch_prior(cfg, context_pitches), self.grammar.musical)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        bar_len = [bar_positions(vocab, h) for h in headers]
        density = [requested_density(vocab, c) for c in controls]
        # the first bar's opening is the same for every row: read it once at batch 1, then copy the state
        opening = list(headers[0]) + list(controls[0])
        state = self._read(prefix_state, opening[:-1]).expand(batch)
        rows = [_Row(queue=[opening[-1]], fed=opening[:-1], forced=kept_bars) for _ in range(batch)]
        logits: Tensor | None = None
        pad = vocab.pad
        emitted = [0] * batch                                    # bars of each row yielded so far
        while not all(r.done for r in rows):
            to_sample = [b for b, r in enumerate(rows) if not r.done and not r.queue]
            sampled: dict[int, int] = {}
            if to_sample:
                assert logits is not None
                masks = torch.stack([self._allowed(rows[b], cfg, n_bars, bar_len, density, empty_runs,
                                                   require_notes) for b in to_sample])
                sub = logits[to_sample].float()
                hist = history_tensor([rows[b].history + rows[b].bar_tokens for b in to_sample],
                                      cfg.repetition_window)
                sub = apply_chain([AllowedMask(masks), *chain], sub, hist)
                picks = sample_rows(sub, [gens[b] for b in to_sample])
                sampled = {b: int(t) for b, t in zip(to_sample, picks)}
            feed = torch.full((batch,), pad, dtype=torch.long)
            for b, row in enumerate(rows):
                if row.done:
                    continue
                if row.queue:
                    tok = row.queue.pop(0)
                    if not row.queue:                            # last forced token: remember how to redo the bar
                        row.snapshot = (state.index(b), tok)
                    feed[b] = tok
                    row.fed.append(tok)
                    continue
                tok = sampled[b]
                feed[b] = self._advance(b, row, tok, state, cfg, n_bars, headers, controls, checker)
            for b, row in enumerate(rows):
                while emitted[b] < len(row.bars):
                    yield b, emitted[b], row.bars[emitted[b]]
                    emitted[b] += 1
            if all(r.done for r in rows):
                break
            logits, state = self.model.step(feed, state)
        return [GeneratedSpan(bars=r.bars, tokens=r.fed, sampled=r.sampled, attempts=r.attempts, seed=int(s),
                              mismatches=r.mismatches) for r, s in zip(rows, seeds)]

    def pitch_prior(self, cfg: SampleConfig, context_pitches: Sequence[int]) -> PitchPrior | None:
        """The pitch prior of one prompt, or None when it is off (strengths 0, drums, no context notes)."""
        if self.is_drum or not context_pitches or not (cfg.keep_key or cfg.keep_register):
            return None
        if self._pitch_table is None:
            self._pitch_table = PitchTable.build(self.vocab, self.width)
        return PitchPrior.fit(self._pitch_table, context_pitches, cfg.keep_key, cfg.keep_register)

    # ------------------------------------------------------------------------------------------ one row
    def _allowed(self, row: _Row, cfg: SampleConfig, n_bars: int, bar_len: list[int],
                 density: list[int | None], empty_runs: bool = False, require_notes: bool = False) -> Tensor:
        """The grammar mask ``(V,)`` of one row at its current point."""
        g = self.grammar
        nxt = g.next_state[row.state]
        allowed = nxt >= 0
        has_pos = g.first_pos >= 0
        allowed &= ~has_pos | ((g.first_pos > row.pos) & (g.last_pos < bar_len[row.bar]))
        total = row.notes + g.notes
        open_end = (nxt == S_POS) | (nxt == S_TEMPO)             # would still need a note after it
        allowed &= (total <= cfg.max_notes_per_bar) & ~(open_end & (total >= cfg.max_notes_per_bar))
        want = density[row.bar]
        if row.state == S_START:
            may_end = want == 0 or (want is None and (empty_runs or not row.prev_empty))
            if want == 0:
                allowed[:] = False                               # asked for an empty bar: close it at once
            elif require_notes and row.bar == n_bars - 1 and not row.has_notes:
                may_end = False                                  # a track asked to hold notes is never empty
        else:
            may_end = row.state == S_NOTE
        end_token = g.fill_end if row.bar == n_bars - 1 else g.bar
        allowed[g.bar] = False
        allowed[g.fill_end] = False
        if may_end:
            allowed[end_token] = True
            if row.bar == n_bars - 1:
                allowed[g.bar] = True                            # Bar_None on the last bar also just ends it
        return allowed

    def _advance(self, b: int, row: _Row, tok: int, state, cfg: SampleConfig, n_bars: int,
                 headers, controls, checker) -> int:
        """Apply sampled ``tok`` to row ``b``; return the id to feed this step (pad when the row is done)."""
        g = self.grammar
        if tok in (g.bar, g.fill_end):
            return self._close_bar(b, row, state, cfg, n_bars, headers, controls, checker)
        row.sampled += 1
        row.bar_tokens.append(tok)
        row.state = int(g.next_state[row.state, tok])
        if g.last_pos[tok] >= 0:
            row.pos = int(g.last_pos[tok])
        row.notes += int(g.notes[tok])
        if len(row.bar_tokens) >= cfg.max_tokens_per_bar:
            row.limit_hits += 1
            if row.limit_hits > cfg.retries:
                raise GenerationError(
                    f"bar {row.bar + 1} of the span did not end within {cfg.max_tokens_per_bar} tokens "
                    f"after {cfg.retries} retries", argument="max_tokens_per_bar", value=cfg.max_tokens_per_bar,
                    fix="raise max_tokens_per_bar or retries, or lower the temperature")
            return self._restart_bar(b, row, state)
        return tok

    def _close_bar(self, b: int, row: _Row, state, cfg: SampleConfig, n_bars: int, headers, controls,
                   checker) -> int:
        body = self.vocab.unbpe(row.bar_tokens)
        bar_ids = list(headers[row.bar]) + list(body)
        if checker is not None and cfg.control_retries > 0:
            missed = int(checker(row.bar, bar_ids))
            if row.best is None or missed < row.best[0]:
                row.best = (missed, list(row.bar_tokens), state.index(b))
            if missed > 0 and row.tries <= cfg.control_retries:
                row.tries += 1
                return self._restart_bar(b, row, state)
            missed, kept, kept_state = row.best
            if kept != row.bar_tokens:                           # an earlier attempt was closer: go back to it
                state.put(b, kept_state)
                row.bar_tokens = kept
                bar_ids = list(headers[row.bar]) + list(self.vocab.unbpe(kept))
            row.mismatches.append(missed)
        elif checker is not None:
            row.mismatches.append(int(checker(row.bar, bar_ids)))
        row.bars.append(bar_ids)
        row.history.extend(row.bar_tokens)
        row.fed.extend(row.bar_tokens)
        row.attempts.append(row.tries + row.limit_hits)
        row.prev_empty = not row.bar_tokens
        row.has_notes = row.has_notes or bool(row.bar_tokens)
        row.bar += 1
        row.bar_tokens, row.state, row.pos, row.notes = [], S_START, -1, 0
        row.tries, row.limit_hits, row.best = 1, 0, None
        kept: list[int] = []
        while row.bar < n_bars and row.forced[row.bar] is not None:     # kept bars: read, never sampled
            body = list(row.forced[row.bar])
            kept += list(headers[row.bar]) + list(controls[row.bar]) + body
            row.bars.append(list(headers[row.bar]) + list(self.vocab.unbpe(body)))
            row.history.extend(body)
            row.attempts.append(0)
            if checker is not None:
                row.mismatches.append(0)
            row.prev_empty = not body
            row.has_notes = row.has_notes or bool(body)
            row.bar += 1
        if row.bar == n_bars:
            row.done = True
            return self.vocab.pad
        # open the next bar (after any kept bars): header and controls read in one parallel call for this row,
        # the last one fed by the batched step so the bar can be redone from just before it
        opening = kept + list(headers[row.bar]) + list(controls[row.bar])
        state.put(b, self._read(state.index(b), opening[:-1]))
        row.snapshot = (state.index(b), opening[-1])
        row.fed.extend(opening)
        return opening[-1]

    def _read(self, state, ids: Sequence[int]):
        """The state after feeding ``ids`` to a batch-1 ``state`` in one parallel call (not modifying it)."""
        if not ids:
            return state
        _, new = self.model(torch.tensor([list(ids)], dtype=torch.long), state=state, return_state=True)
        return new

    def _restart_bar(self, b: int, row: _Row, state) -> int:
        """Put row ``b`` back to just before its bar's last forced token and feed that token again."""
        assert row.snapshot is not None
        saved, tok = row.snapshot
        state.put(b, saved)
        row.bar_tokens, row.state, row.pos, row.notes = [], S_START, -1, 0
        return tok
