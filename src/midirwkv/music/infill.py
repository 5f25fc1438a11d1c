"""Infill requests -> prompt ids; generated bars -> notes spliced into the score.

Bar infilling (one span of one track), one sequence::

    Track_Start Program_q <bars lo..hi> Track_End                                         (each other track)
    Track_Start Program_p <bars lo..start> Infill_Bar x n <bars end..hi> Track_End      (the target)
    FillBar_Start Bar_None TimeSig <controls of bar 1>       <- the prompt ends here

Two layouts (``LAYOUTS``) order the tracks. ``"file_order"`` (the paper's, and our checkpoints trained
before the layout was recorded) writes every track in its original place, so the target's own bars can end
thousands of tokens before the first generated one. ``"target_last"`` writes the target track last, right
before ``FillBar_Start``: its register and key are the freshest thing in the recurrent state when the span is
written. A checkpoint records the layout it was trained with (``prompt_layout`` in its training config) and
inference uses that one. In ``"target_last"`` the other tracks come in ``OTHER_ORDER`` (``other_order``):
``"nearest_last"``, drum tracks first, then the pitched tracks from the register furthest from the target's to
the nearest (mean pitch of the context bars; a track silent there counts as furthest; ties keep file order),
chosen on validation prompts (reports/training/track_order: 0.07 bits per note fewer than file order, p = 0.005,
with the seventh-run model, trained with file order); ``"file"`` keeps file order (runs 6 to 8 trained so).

Other tracks keep their notes inside the span. Each infilled bar's header carries its REAL time
signature (the authors forced 4/4). Context bars are BPE-encoded one bar at a time, headers unmerged (with the
paper's released tokenizer, ``music.paper_vocab``, each track is encoded as MidiTok 3.0.5 encodes it).
When the prompt exceeds its token budget the context shrinks by whole bars, the larger side first (so
it stays symmetric), never the span. With ``own_bars_first`` (opt-in) the budget goes to the target track's own
context bars first (the widest such window that fits with the other tracks on the span only, shrunk the same
way), then to the other tracks' bars nearest the span, inside the target's window, as many as still fit
(``Prompt.other_window``); the other tracks always keep their bars inside the span.

Track infilling (a new track, or one regenerated whole)::

    <other tracks> Infill_Track Track_Start Program_p <track controls> Bar_None TimeSig    <- prompt end

and the generator writes the track's bars, each opened with its real header.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from midirwkv.config import PROMPT_LAYOUTS
from midirwkv.errors import BadRequestError
from midirwkv.music.controls import BarControls, BarNotes, TrackControls
from midirwkv.music.remi import (
    ScoreTokens,
    TrackTokens,
    _default_vocab,
    decode_bar_tokens,
    quantise_track,
    tables,
)

LAYOUTS = PROMPT_LAYOUTS
OTHER_ORDERS = ("nearest_last", "file")
"""Orders of the other tracks in the ``"target_last"`` layout (module docstring)."""
OTHER_ORDER = OTHER_ORDERS[0]
"""The order training samples and inference prompts use (chosen in reports/training/track_order)."""
"""Track orders of a bar-infilling prompt (see the module docstring); the first is the one new runs train with."""


def check_layout(layout: object) -> str:
    """``layout`` if it is one of ``LAYOUTS``, else the typed error naming it."""
    if layout not in LAYOUTS:
        raise BadRequestError("unknown prompt layout", argument="layout", value=layout,
                              fix=f"use one of {list(LAYOUTS)}")
    return str(layout)


def layout_of(meta: dict | None) -> str:
    """The prompt layout a checkpoint was trained with, from its ``meta.json``.

    Checkpoints written before the layout was recorded (ours up to the fifth run, the paper's) used the
    file order.
    """
    cfg = (meta or {}).get("train_config") or {}
    return check_layout(cfg.get("prompt_layout", "file_order"))


CONTEXT_BARS = 16
"""Default bars of context each side of an infilled span (every front end reads it from here)."""


@dataclass
class InfillRequest:
    track: int                       # track index in the Score
    start: int                       # first bar (0-based) of the span
    end: int                         # one past the last bar
    controls: list[BarControls] | None = None   # per span bar; None = measured from the original bars;
                                                # any field None inside = left free (no token fed)
    context_bars: int = CONTEXT_BARS  # bars of context left and right of the span
    max_prompt_tokens: int = 8192
    own_bars_first: bool = False     # under the budget, the target track's context bars before the others'


@dataclass
class Prompt:
    ids: list[int]                   # ends with FillBar_Start Bar TimeSig <controls of bar 1>
    bar_headers: list[list[int]]     # per span bar: base ids Bar_None TimeSig_x/y (real meter)
    bar_controls: list[list[int]]    # per span bar: the control ids to feed after its header
    request: InfillRequest
    window: tuple[int, int]          # bars of context actually used [lo, hi)
    context_pitches: list[int] = field(default_factory=list)
    """Pitches of the target track's notes in the context bars of ``window`` (not the span), in order;
    empty for drums. The pitch prior of ``infer.processors.PitchPrior`` is fitted to them."""
    other_window: tuple[int, int] | None = None
    """Bars ``[lo, hi)`` the other tracks were written with: ``window`` itself, or with ``own_bars_first`` a
    window inside it (never narrower than the span)."""


# ------------------------------------------------------------------------------------------- validation


def _check_int(name: str, value: object, lo: int, hi: int | None, fix: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo or (
            hi is not None and value > hi):
        raise BadRequestError(f"{name} out of range", argument=name, value=value, fix=fix)
    return int(value)


def _target(st: ScoreTokens, track: object) -> TrackTokens:
    indices = [t.index for t in st.tracks]
    if not isinstance(track, (int, np.integer)) or isinstance(track, bool) or int(track) not in indices:
        raise BadRequestError("no track with notes at that index", argument="track", value=track,
                              fix=f"use one of {indices} (see `midirwkv inspect`); to write a track that has "
                                  "no notes use track infilling (TrackRequest)")
    return st.tracks[indices.index(int(track))]


def _as_controls(c: object, argument: str) -> BarControls:
    if isinstance(c, BarControls):
        return c
    if isinstance(c, dict):
        try:
            return BarControls(**c)
        except TypeError:
            raise BadRequestError("unknown control names", argument=argument, value=sorted(c),
                                  fix="use poly_min poly_max density dur_whole dur_half dur_quarter dur_eighth "
                                      "dur_sixteenth") from None
    raise BadRequestError("controls must be BarControls", argument=argument, value=type(c).__name__,
                          fix="pass music.controls.BarControls(...) per span bar")


def validate_request(st: ScoreTokens, req: InfillRequest) -> tuple[TrackTokens, list[BarControls]]:
    """Check a bar-infilling request against a score; returns (target track, controls per span bar)."""
    tt = _target(st, req.track)
    n_bars = st.n_bars
    start = _check_int("start", req.start, 0, n_bars - 1, f"use a first bar in 0..{n_bars - 1} (0-based)")
    end = _check_int("end", req.end, 0, n_bars, f"use an end bar in 1..{n_bars} (one past the last bar)")
    if end <= start:
        raise BadRequestError("the span holds no bars", argument="end", value=(start, end),
                              fix="use end > start, e.g. start=8, end=12 for four bars")
    _check_int("context_bars", req.context_bars, 0, None, "use 0 or more bars, e.g. 16")
    _check_int("max_prompt_tokens", req.max_prompt_tokens, 1, None, "use a positive budget, e.g. 8192")
    if not isinstance(req.own_bars_first, bool):
        raise BadRequestError("own_bars_first must be True or False", argument="own_bars_first",
                              value=req.own_bars_first, fix="pass True to fill the budget with the target's bars "
                                                            "first, False for one window for every track")
    n = end - start
    if req.controls is None:
        controls = list(tt.controls[start:end])
    else:
        if not isinstance(req.controls, (list, tuple)) or len(req.controls) != n:
            raise BadRequestError("one BarControls per span bar is needed", argument="controls",
                                  value=len(req.controls) if isinstance(req.controls, (list, tuple)) else req.controls,
                                  fix=f"give {n} BarControls (None inside a field leaves it free)")
        controls = [_as_controls(c, "controls") for c in req.controls]
    return tt, controls


# ------------------------------------------------------------------------------------------------ prompt


def _program_id(vocab, tt_program: int) -> int:
    if not _has_program(vocab, tt_program):
        raise BadRequestError("the model's vocabulary has no token for this program", argument="program",
                              value=tt_program, fix="pick a track (or a new track's program) the tokenizer lists "
                                                    "(the paper's release has no Program_127)")
    return vocab.id(f"Program_{tt_program}")


def build_prompt(vocab, st: ScoreTokens, req: InfillRequest, layout: str = "file_order",
                 other_order: str = OTHER_ORDER) -> Prompt:
    """The prompt of one bar-infilling request in ``layout``, the other tracks in ``other_order`` when the
    layout is ``"target_last"`` (see the module docstring)."""
    check_layout(layout)
    if other_order not in OTHER_ORDERS:
        raise BadRequestError("unknown order of the other tracks", argument="other_order", value=other_order,
                              fix=f"use one of {list(OTHER_ORDERS)}")
    tt, controls = validate_request(st, req)
    start, end = int(req.start), int(req.end)
    n_bars = st.n_bars
    ctx = int(req.context_bars)
    first, last = max(0, start - ctx), min(n_bars, end + ctx)     # only these bars can be in the prompt
    bpe_bars = {t.index: [vocab.bpe(b) if first <= k < last else [] for k, b in enumerate(t.bars)]
                for t in st.tracks}
    lens = {i: np.concatenate([[0], np.cumsum([len(b) for b in bars])]) for i, bars in bpe_bars.items()}
    headers = [list(tt.bars[b][:2]) for b in range(start, end)]
    ctrl_ids = [vocab.ids(c.to_tokens(tt.is_drum)) for c in controls]

    def cost(lo: int, hi: int, olo: int | None = None, ohi: int | None = None) -> int:
        """Estimated prompt length: the target's context bars [lo, hi), the others' [olo, ohi) (default the same)."""
        olo, ohi = lo if olo is None else olo, hi if ohi is None else ohi
        total = 1 + len(headers[0]) + len(ctrl_ids[0])
        for t in st.tracks:
            c = lens[t.index]
            total += 3
            if t.index == tt.index:
                total += int(c[start] - c[lo]) + (end - start) + int(c[hi] - c[end])
            else:
                total += int(c[ohi] - c[olo])
        return total

    budget = int(req.max_prompt_tokens)
    left = min(int(req.context_bars), start)
    right = min(int(req.context_bars), n_bars - end)
    if req.own_bars_first:
        # the target's own bars first, the other tracks on the span only; then the others' bars inside that window
        left, right = _shrink(lambda a, b: cost(start - a, end + b, start, end) > budget, left, right)
        lo, hi = start - left, end + right
        oleft, oright = _shrink(lambda a, b: cost(lo, hi, start - a, end + b) > budget, left, right)
        olo, ohi = start - oleft, end + oright
    else:
        left, right = _shrink(lambda a, b: cost(start - a, end + b) > budget, left, right)
        lo, hi = olo, ohi = start - left, end + right
    need = cost(lo, hi, olo, ohi)
    if need > budget:
        raise BadRequestError("the prompt does not fit the token budget even without context",
                              argument="max_prompt_tokens", value=req.max_prompt_tokens,
                              fix=f"raise it to at least {need}, or infill fewer bars at once")
    order = [t for t in st.tracks if t.index == tt.index or _has_program(vocab, t.program)]
    if layout == "target_last":
        others = [t for t in order if t.index != tt.index]
        if other_order == "nearest_last":
            others = nearest_last(vocab, others, tt, [*range(lo, start), *range(end, hi)])
        order = others + [tt]
    while True:
        ids = _infill_ids(vocab, order, tt, bpe_bars, (lo, hi), (olo, ohi), start, end)
        ids += [vocab.fillbar_start] + headers[0] + ctrl_ids[0]
        # a vocabulary whose BPE merges a track's head into its first bar (the paper's) can differ from the
        # per-bar estimate by a token or two: shrink further (the other tracks first with own_bars_first)
        if len(ids) <= budget or (lo, hi, olo, ohi) == (start, end, start, end):
            break
        if req.own_bars_first and (olo, ohi) != (start, end):
            olo, ohi = _narrowed(olo, ohi, start, end)
        else:
            lo, hi = _narrowed(lo, hi, start, end)
            olo, ohi = (max(olo, lo), min(ohi, hi)) if req.own_bars_first else (lo, hi)
    if len(ids) > budget:
        raise BadRequestError("the prompt does not fit the token budget even without context",
                              argument="max_prompt_tokens", value=req.max_prompt_tokens,
                              fix=f"raise it to at least {len(ids)}, or infill fewer bars at once")
    return Prompt(ids=ids, bar_headers=headers, bar_controls=ctrl_ids, request=req, window=(lo, hi),
                  context_pitches=_context_pitches(vocab, tt, [*range(lo, start), *range(end, hi)]),
                  other_window=(olo, ohi))


def _shrink(too_long: Callable[[int, int], bool], left: int, right: int) -> tuple[int, int]:
    """Context bars ``(left, right)`` each side of a span, one bar off the larger side (the left on a tie) at a
    time while ``too_long(left, right)`` and any are left."""
    while too_long(left, right) and (left or right):
        if left >= right:
            left -= 1
        else:
            right -= 1
    return left, right


def _narrowed(lo: int, hi: int, start: int, end: int) -> tuple[int, int]:
    """The window ``[lo, hi)`` around the span ``[start, end)`` one bar narrower, on its larger side."""
    return (lo + 1, hi) if start - lo >= hi - end else (lo, hi - 1)


def _merges_track_words(vocab) -> bool:
    """Whether ``vocab`` BPE-encodes a track as MidiTok 3.0.5 does (``PaperVocab``: head, bars and tail as words)."""
    return hasattr(vocab, "encode_words")


def _has_program(vocab, program: int) -> bool:
    return vocab.has(f"Program_{program}")


def _infill_ids(vocab, order: Sequence[TrackTokens], tt: TrackTokens, bpe_bars: dict[int, list[list[int]]],
                window: tuple[int, int], other_window: tuple[int, int], start: int, end: int) -> list[int]:
    """The tracks of a bar-infilling prompt: the target's context bars ``window`` with its span as
    ``Infill_Bar``s, every other track's bars ``other_window``."""
    ids: list[int] = []
    lo, hi = window
    olo, ohi = other_window
    span = [vocab.infill_bar] * (end - start)
    for t in order:
        head = [vocab.track_start, _program_id(vocab, t.program)]
        if _merges_track_words(vocab):
            if t.index == tt.index:
                words = [t.bars[b] for b in range(lo, start)] + [span] + [t.bars[b] for b in range(end, hi)]
            else:
                words = [t.bars[b] for b in range(olo, ohi)]
            ids += vocab.track_ids(head, words, [vocab.track_end])
            continue
        ids += head
        bars = bpe_bars[t.index]
        if t.index == tt.index:
            for b in range(lo, start):
                ids += bars[b]
            ids += span
            for b in range(end, hi):
                ids += bars[b]
        else:
            for b in range(olo, ohi):
                ids += bars[b]
        ids.append(vocab.track_end)
    return ids


def register_distances(vocab, tracks: Sequence[TrackTokens], tt: TrackTokens, bars: Sequence[int]) -> list[float]:
    """Per track of ``tracks``: the distance of its mean pitch over ``bars`` from ``tt``'s (``tt``'s over all
    its bars when it is silent there), in semitones; infinite for drums and for a track silent in ``bars``."""
    pitch_of = _pitch_values(vocab)

    def mean(t: TrackTokens, where) -> float:
        pitches = [pitch_of[i] for b in where for i in t.bars[b] if i in pitch_of]
        return sum(pitches) / len(pitches) if pitches else math.nan

    target = math.nan if tt.is_drum else mean(tt, bars)
    if math.isnan(target) and not tt.is_drum:
        target = mean(tt, range(len(tt.bars)))
    out = []
    for t in tracks:
        m = math.nan if t.is_drum else mean(t, bars)
        out.append(math.inf if math.isnan(m) or math.isnan(target) else abs(m - target))
    return out


def nearest_last(vocab, others: Sequence[TrackTokens], tt: TrackTokens, bars: Sequence[int]) -> list[TrackTokens]:
    """``others`` ordered drums first, then from the register furthest from ``tt``'s to the nearest
    (:func:`register_distances`; a track silent in ``bars`` counts as furthest); ties keep the given order."""
    dist = register_distances(vocab, others, tt, bars)
    ranked = sorted(range(len(others)), key=lambda k: dist[k], reverse=True)   # reverse keeps ties in order
    return [others[k] for k in ranked]


def _pitch_values(vocab) -> dict[int, int]:
    """Pitch token id -> MIDI pitch of ``vocab``."""
    return {i: k for k, i in tables(vocab).pitch_id.items()}


def _context_pitches(vocab, tt: TrackTokens, bars: Sequence[int]) -> list[int]:
    """The pitches of ``tt``'s notes in ``bars`` (from the base ids); empty for a drum track."""
    if tt.is_drum:
        return []
    pitch_of = _pitch_values(vocab)
    return [pitch_of[i] for b in bars for i in tt.bars[b] if i in pitch_of]


# ------------------------------------------------------------------------------------------------ splice


def _notes_soa(notes: Sequence) -> dict[str, np.ndarray]:
    return {"time": np.array([n.time for n in notes], dtype=np.int32),
            "duration": np.array([n.duration for n in notes], dtype=np.int32),
            "pitch": np.array([n.pitch for n in notes], dtype=np.int8),
            "velocity": np.array([n.velocity for n in notes], dtype=np.int8)}


def _replace_bars(score, st: ScoreTokens, track_index: int, start: int, end: int,
                  bars_base_ids: Sequence[Sequence[int]], vocab=None):
    """A copy of ``score`` where the notes of track ``track_index`` starting in bars [start, end) are replaced."""
    import symusic

    new = score.copy(deep=True)
    track = new.tracks[track_index]
    t0, t1 = st.bar_ticks[start], st.bar_ticks[end]
    arr = track.notes.numpy()
    tb = tables(vocab if vocab is not None else _default_vocab())
    if len(arr["time"]):
        q = quantise_track(track, st.bar_ticks, st.time_sigs, st.tpq, tb)
        inside = (q.all_bar >= start) & (q.all_bar < end) & (arr["time"] < st.bar_ticks[-1])
        keep = {k: v[~inside] for k, v in arr.items()}
    else:
        keep = arr
    added = decode_bar_tokens(bars_base_ids, st.bar_ticks[start:end + 1], st.tpq, bool(track.is_drum), vocab)
    lo, hi = tb.pitch_range(bool(track.is_drum))
    # a kept note that starts before the span and still sounds in it: a new note of the same pitch there
    # would end it early once written to MIDI (one note-on/off pair per pitch), so the old note wins
    held: dict[int, list[tuple[int, int]]] = {}
    for t, d, p in zip(np.asarray(keep["time"]), np.asarray(keep["duration"]), np.asarray(keep["pitch"])):
        if t < t0 < t + d:
            held.setdefault(int(p), []).append((int(t), int(t + d)))
    extra = []
    for n in added:
        if n.time >= t1 or n.time < t0 or not lo <= n.pitch <= hi:
            continue
        if any(a < n.time < b for a, b in held.get(int(n.pitch), ())):
            continue
        extra.append(symusic.Note(n.time, max(1, min(n.duration, t1 - n.time)), n.pitch, n.velocity))
    soa = _notes_soa(extra)
    merged = {k: np.concatenate([np.asarray(keep[k]), soa[k].astype(np.asarray(keep[k]).dtype)]) for k in soa}
    order = np.lexsort((merged["pitch"], merged["time"]))
    track.notes = symusic.Note.from_numpy(**{k: v[order] for k, v in merged.items()})
    return new


def splice(score, st: ScoreTokens, req: InfillRequest, bars_base_ids: list[list[int]], vocab=None):
    """Place generated bars (base ids, ``Bar_None TimeSig`` first) into a copy of ``score`` at the span's ticks.

    The target track's notes that start in the span (on the tokenizer's grid) are replaced by the decoded
    ones; a new note ringing past the span's end is cut there. Everything else is untouched: every other
    note keeps its tick, duration, velocity and track, and the file's ticks per quarter, tempos, meters,
    names and programs are kept. ``score`` itself is never modified.
    """
    _target(st, req.track)
    start, end = int(req.start), int(req.end)
    if not 0 <= start < end <= st.n_bars:
        raise BadRequestError("span outside the score", argument="end", value=(start, end),
                              fix=f"use 0 <= start < end <= {st.n_bars}")
    if len(bars_base_ids) != end - start:
        raise BadRequestError("one generated bar per span bar is needed", argument="bars_base_ids",
                              value=len(bars_base_ids), fix=f"give {end - start} bars")
    return _replace_bars(score, st, int(req.track), start, end, bars_base_ids, vocab)


# ---------------------------------------------------------------------------------------- track infilling


@dataclass
class TrackRequest:
    """Write a whole track: a new one (``track=None`` and a ``program``) or an existing one regenerated."""

    track: int | None = None             # Score index of the track to regenerate; None = a new track
    program: int | None = None           # new track: 0..127, or -1 for drums
    controls: TrackControls | None = None   # None: measured from the track (regenerate) or free (new)
    max_prompt_tokens: int = 8192
    name: str = ""                       # name of a new track


@dataclass
class TrackPrompt:
    ids: list[int]                       # ends with Infill_Track Track_Start Program <controls> Bar TimeSig
    bar_headers: list[list[int]]         # per bar of the score: Bar_None TimeSig_x/y
    bar_controls: list[list[int]] = field(default_factory=list)   # per bar: empty (track controls only)
    request: TrackRequest | None = None
    window: tuple[int, int] = (0, 0)
    is_drum: bool = False
    program: int = 0


def track_controls_of(st: ScoreTokens, tt: TrackTokens, vocab) -> TrackControls:
    """Measure the track controls of an encoded track (from its base ids)."""
    from midirwkv.music.controls import DUR_UNITS_PER_QUARTER
    from midirwkv.music.remi import POS_PER_BEAT

    tb = tables(vocab)
    bars, pitches = [], []
    for b, ids in enumerate(tt.bars):
        den = st.time_sigs[b][1]
        pos, ps, ds, cur = [], [], [], 0
        for i in ids:
            e = tb.decode.get(i)
            if e is None:
                continue
            if e[0] == "O":
                cur = int(e[1])
            elif e[0] == "P":
                pos.append(cur)
                ps.append(int(e[1]))
            elif e[0] == "D":
                ds.append(int(e[1]) * 4 * DUR_UNITS_PER_QUARTER // (POS_PER_BEAT * den))
        bars.append(BarNotes(tuple(pos), tuple(ds)))
        pitches.append(ps)
    return TrackControls.compute(bars, pitches, tt.is_drum)


def build_track_prompt(vocab, st: ScoreTokens, req: TrackRequest) -> TrackPrompt:
    """Prompt to write a whole track over every bar of the score, the other tracks as context."""
    n_bars = st.n_bars
    if n_bars <= 0:
        raise BadRequestError("the score has no bars", argument="st", value=0, fix="pass a score with notes")
    _check_int("max_prompt_tokens", req.max_prompt_tokens, 1, None, "use a positive budget, e.g. 8192")
    if req.track is not None:
        tt = _target(st, req.track)
        program, is_drum = tt.program, tt.is_drum
        controls = req.controls if req.controls is not None else track_controls_of(st, tt, vocab)
    else:
        if req.program is None:
            raise BadRequestError("a new track needs a program", argument="program", value=None,
                                  fix="pass program=0..127, or -1 for drums")
        program = _check_int("program", req.program, -1, 127, "use 0..127, or -1 for drums")
        is_drum = program == -1
        tt = None
        controls = req.controls if req.controls is not None else TrackControls()
    if not isinstance(controls, TrackControls):
        raise BadRequestError("controls must be TrackControls", argument="controls", value=type(controls).__name__,
                              fix="pass music.controls.TrackControls(...)")
    if tt is not None and controls.density_max == 0 and all(t.index == tt.index for t in st.tracks):
        # the result would hold no notes at all: a MIDI file nothing (this tool included) can use
        raise BadRequestError("density 0 would empty the only track with notes", argument="density",
                              value=f"{controls.density_min}-{controls.density_max}",
                              fix="ask for at least one note per bar (e.g. density 1-8), or write a new track "
                                  "with a program instead")
    headers = [list(st.tracks[0].bars[b][:2]) if st.tracks else [vocab.bar] for b in range(n_bars)]
    ids: list[int] = []
    for t in st.tracks:
        if (tt is not None and t.index == tt.index) or not _has_program(vocab, t.program):
            continue
        ids += vocab.track_ids([vocab.track_start, _program_id(vocab, t.program)], t.bars, [vocab.track_end])
    ids += [vocab.infill_track, vocab.track_start, _program_id(vocab, program)]
    ids += vocab.ids(controls.to_tokens(is_drum))
    ids += headers[0]
    if len(ids) > req.max_prompt_tokens:
        raise BadRequestError("the track prompt does not fit the token budget", argument="max_prompt_tokens",
                              value=req.max_prompt_tokens, fix=f"raise it to at least {len(ids)}")
    return TrackPrompt(ids=ids, bar_headers=headers, bar_controls=[[] for _ in range(n_bars)], request=req,
                       window=(0, n_bars), is_drum=is_drum, program=program)


def splice_track(score, st: ScoreTokens, req: TrackRequest, bars_base_ids: list[list[int]], vocab=None):
    """Put a generated whole track into a copy of ``score``: replace the track's notes, or add a new track."""
    import symusic

    if len(bars_base_ids) != st.n_bars:
        raise BadRequestError("one generated bar per score bar is needed", argument="bars_base_ids",
                              value=len(bars_base_ids), fix=f"give {st.n_bars} bars")
    if req.track is not None:
        _target(st, req.track)
        new = _replace_bars(score, st, int(req.track), 0, st.n_bars, bars_base_ids, vocab)
        return new
    program = _check_int("program", req.program, -1, 127, "use 0..127, or -1 for drums")
    new = score.copy(deep=True)
    is_drum = program == -1
    track = symusic.Track(req.name or ("Drums" if is_drum else f"Program {program}"), 0 if is_drum else program,
                          is_drum)
    new.tracks.append(track)
    st_new = ScoreTokens(tracks=st.tracks + [TrackTokens(len(new.tracks) - 1, program, is_drum, track.name, [], [])],
                         bar_ticks=st.bar_ticks, time_sigs=st.time_sigs, tpq=st.tpq)
    return _replace_bars(new, st_new, len(new.tracks) - 1, 0, st.n_bars, bars_base_ids, vocab)
