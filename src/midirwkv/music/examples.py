"""Seeded training samples with the paper's sampling, and their loss mask.

``build_sample(st, vocab, rng)`` works on a ``ScoreTokens`` (base ids per bar), so it runs from the
pre-tokenised cache. One sample:

1. Tracks: those with notes past the first bar (all tracks if none), keep ``round(U(0.4, 1) x n)`` (>= 1)
   of them, shuffled.
2. Task: bar infilling with probability 0.75, track infilling 0.25 (always bar infilling with one track).
3. Augmentation: one pitch shift in -6..6 for every pitched track (skipped for a track where a pitch would
   leave 21..108; drums never shift), one velocity shift in -2..2 re-binned to the 24 velocity values.
   Controls do not change under these augmentations.
4. Bar infilling: span length ``n = max(min(choice{1,2,4,8}, bars), round(bars x U(0.1, 0.4)))``, start
   uniform, resampled when the span holds no note; sequence = ``music.infill.build_prompt`` in the given
   ``layout`` (all 8 controls per bar) followed by each span bar's body and ``FillBar_End``. Track infilling: the other
   tracks, then ``Infill_Track Track_Start Program <track controls> <bars> Track_End``.
5. Windowing to ``ctx_len`` by whole bars: bar infilling shrinks the context symmetrically around the
   span (then the span from its end if one span alone is too long); track infilling takes a random
   window of whole bars that fits.

Loss mask: every token is predicted except ``Infill_Bar``, ``Infill_Track``, ``FillBar_Start`` and the
control tokens (given, never predicted); padding is added later by the collator with mask 0.
``target_mask`` marks the infilled part (span bars or the written track) for a span-only loss.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from midirwkv.errors import BadRequestError, DataError
from midirwkv.music.infill import LAYOUTS, InfillRequest, build_prompt, check_layout, track_controls_of
from midirwkv.music.remi import PITCH_RANGE, ScoreTokens, TrackTokens, tables

SPAN_CHOICES = (1, 2, 4, 8)


@dataclass
class Sample:
    """One training sequence."""

    ids: np.ndarray              # (T,) int64, T <= ctx_len
    loss_mask: np.ndarray        # (T,) bool: this token is predicted
    target_mask: np.ndarray      # (T,) bool: this token belongs to the infilled part (span or track)
    kind: str                    # "bar" or "track"
    track: int                   # Score index of the infilled track
    span: tuple[int, int]        # infilled bars [start, end) (track infilling: the window)
    window: tuple[int, int]      # bars present in the sequence [lo, hi)
    tracks: list[int]            # Score indices of the kept tracks, in sequence order
    pitch_shift: int
    velocity_shift: int

    @property
    def target_slice(self) -> slice:
        """Positions of the infilled part (contiguous)."""
        idx = np.flatnonzero(self.target_mask)
        return slice(int(idx[0]), int(idx[-1]) + 1) if len(idx) else slice(0, 0)


def augment(st: ScoreTokens, vocab, pitch_shift: int, velocity_shift: int) -> ScoreTokens:
    """A copy of ``st`` with pitches and velocities shifted (see the module docstring)."""
    tb = tables(vocab)
    vel_index = {i: k for k, i in enumerate(tb.vel_ids)}
    vel_map = {}
    for i, k in vel_index.items():
        target = tb.vel_values[k] + velocity_shift
        vel_map[i] = tb.vel_ids[int(np.argmin(np.abs(tb.vel_values - target) - 1e-9 * tb.vel_values))]
    pitch_of = {i: p for p, i in tb.pitch_id.items()}
    tracks = []
    for t in st.tracks:
        shift = 0
        if not t.is_drum and pitch_shift:
            pitches = [pitch_of[i] for bar in t.bars for i in bar if i in pitch_of]
            if pitches and PITCH_RANGE[0] <= min(pitches) + pitch_shift and \
                    max(pitches) + pitch_shift <= PITCH_RANGE[1]:
                shift = pitch_shift
        bars = []
        for bar in t.bars:
            out = []
            for i in bar:
                if shift and i in pitch_of:
                    i = tb.pitch_id[pitch_of[i] + shift]
                elif velocity_shift and i in vel_map:
                    i = vel_map[i]
                out.append(i)
            bars.append(out)
        tracks.append(replace(t, bars=bars))
    return replace(st, tracks=tracks)


def _note_bars(t: TrackTokens, tb) -> list[bool]:
    pitch_like = set(tb.pitch_id.values()) | set(tb.drum_id.values())
    return [any(i in pitch_like for i in bar) for bar in t.bars]


def build_sample(st: ScoreTokens, vocab, rng: np.random.Generator, ctx_len: int = 2048, p_track: float = 0.25,
                 augment_data: bool = True, layout: str = LAYOUTS[0]) -> Sample:
    """One seeded training sample (see the module docstring). Same ``rng`` state -> same sample.

    ``layout`` is the bar-infilling prompt layout (``music.infill.LAYOUTS``); it does not change the random
    draws, so the same ``rng`` state gives the same span, tracks and augmentation in either layout.
    """
    check_layout(layout)
    if ctx_len < 16:
        raise DataError("ctx_len is too small", argument="ctx_len", value=ctx_len, fix="use e.g. 2048")
    tb = tables(vocab)
    notes = {t.index: _note_bars(t, tb) for t in st.tracks}
    eligible = [t for t in st.tracks if any(notes[t.index][1:])] or [t for t in st.tracks if any(notes[t.index])]
    if not eligible or st.n_bars <= 0:
        raise DataError("the score has no track with notes", argument="st", value=len(st.tracks),
                        fix="drop files without notes when preparing the corpus")
    k = max(1, round(rng.uniform(0.4, 1.0) * len(eligible)))
    order = rng.permutation(len(eligible))[:k]
    kept = [eligible[int(i)] for i in order]
    kind = "track" if len(kept) > 1 and rng.random() < p_track else "bar"
    ps = int(rng.integers(-6, 7)) if augment_data else 0
    vs = int(rng.integers(-2, 3)) if augment_data else 0
    sub = augment(replace(st, tracks=kept), vocab, ps, vs)
    if kind == "bar":
        return _bar_sample(sub, vocab, rng, ctx_len, notes, ps, vs, layout)
    return _track_sample(sub, vocab, rng, ctx_len, notes, ps, vs)


def _bar_sample(st: ScoreTokens, vocab, rng, ctx_len: int, notes, ps: int, vs: int, layout: str) -> Sample:
    with_notes = [t for t in st.tracks if any(notes[t.index])]
    tt = with_notes[int(rng.integers(len(with_notes)))]
    bars = st.n_bars
    has = notes[tt.index]
    start = end = 0
    for _ in range(10):
        n = max(min(int(rng.choice(SPAN_CHOICES)), bars), round(bars * rng.uniform(0.1, 0.4)))
        n = max(1, min(n, bars))
        start = int(rng.integers(0, bars - n + 1))
        end = start + n
        if any(has[start:end]):
            break
    else:
        first = has.index(True)
        start, end = first, first + 1
    while True:
        body = [vocab.bpe(tt.bars[b][2:]) for b in range(start, end)]
        fill_rest = sum(len(x) for x in body) + 1 + sum(
            2 + len(tt.controls[b].to_tokens(tt.is_drum)) for b in range(start + 1, end))
        budget = ctx_len - fill_rest
        # every context bar costs at least 2 tokens (Bar, TimeSig) in every track: no wider window can fit, so
        # build_prompt need not encode the rest of the file
        reach = min(bars, ctx_len // (2 * len(st.tracks)) + 1)
        req = InfillRequest(track=tt.index, start=start, end=end, context_bars=reach, max_prompt_tokens=max(1, budget))
        try:
            prompt = build_prompt(vocab, st, req, layout)
            break
        except BadRequestError:      # the span alone is too long: shorten it from its end
            if end - start > 1:
                end -= 1
                continue
            prompt = build_prompt(vocab, st, replace(req, max_prompt_tokens=10 ** 9, context_bars=0), layout)
            break
    ids = list(prompt.ids)
    fill_from = len(ids) - len(prompt.bar_headers[0]) - len(prompt.bar_controls[0])
    for j in range(end - start):
        if j:
            ids += prompt.bar_headers[j] + prompt.bar_controls[j]
        ids += body[j]
    ids.append(vocab.fillbar_end)
    ids = ids[:ctx_len]
    target = np.zeros(len(ids), dtype=bool)
    target[fill_from:] = True
    return _finish(ids, target, vocab, "bar", tt.index, (start, end), prompt.window, st, ps, vs)


def _track_sample(st: ScoreTokens, vocab, rng, ctx_len: int, notes, ps: int, vs: int) -> Sample:
    with_notes = [t for t in st.tracks if any(notes[t.index])]
    tt = with_notes[int(rng.integers(len(with_notes)))]
    others = [t for t in st.tracks if t.index != tt.index]
    bars = st.n_bars
    per_bar = [sum(len(vocab.bpe(t.bars[b])) for t in st.tracks) for b in range(bars)]
    fixed = 3 * len(others) + 4 + 11            # track frames, Infill_Track Track_Start Program Track_End, controls
    lo = int(rng.integers(0, bars))
    hi, total = lo, fixed
    while hi < bars and total + per_bar[hi] <= ctx_len:      # grow right from a random bar ...
        total += per_bar[hi]
        hi += 1
    while lo > 0 and total + per_bar[lo - 1] <= ctx_len:     # ... then left while it fits
        lo -= 1
        total += per_bar[lo]
    if hi == lo:
        hi = lo + 1
    win = replace(st, tracks=[replace(t, bars=t.bars[lo:hi], controls=t.controls[lo:hi]) for t in st.tracks],
                  bar_ticks=st.bar_ticks[lo:hi + 1], time_sigs=st.time_sigs[lo:hi])
    wt = next(t for t in win.tracks if t.index == tt.index)
    controls = track_controls_of(win, wt, vocab)
    ids: list[int] = []
    for t in win.tracks:
        if t.index == tt.index:
            continue
        ids += [vocab.track_start, vocab.id(f"Program_{t.program}")]
        for bar in t.bars:
            ids += vocab.bpe(bar)
        ids.append(vocab.track_end)
    ids += [vocab.infill_track, vocab.track_start, vocab.id(f"Program_{tt.program}")]
    ids += vocab.ids(controls.to_tokens(tt.is_drum))
    fill_from = len(ids)
    for bar in wt.bars:
        ids += vocab.bpe(bar)
    ids.append(vocab.track_end)
    ids = ids[:ctx_len]
    target = np.zeros(len(ids), dtype=bool)
    target[fill_from:] = True
    return _finish(ids, target, vocab, "track", tt.index, (lo, hi), (lo, hi), st, ps, vs)


def _finish(ids: list[int], target: np.ndarray, vocab, kind: str, track: int, span: tuple[int, int],
            window: tuple[int, int], st: ScoreTokens, ps: int, vs: int) -> Sample:
    arr = np.asarray(ids, dtype=np.int64)
    given = {vocab.infill_bar, vocab.infill_track, vocab.fillbar_start, vocab.pad}
    mask = np.array([not (i in given or vocab.is_control(i)) for i in ids], dtype=bool)
    return Sample(ids=arr, loss_mask=mask, target_mask=target, kind=kind, track=track, span=span, window=window,
                  tracks=[t.index for t in st.tracks], pitch_shift=ps, velocity_shift=vs)
