"""Span metrics: the generated notes of one track inside the infilled bars against the original notes.

Everything here works on plain note arrays (:class:`NoteArray`: onset ticks, durations in ticks, pitches)
plus the span's bar boundaries in ticks (``bar_ticks``: n_bars + 1 increasing values, bars of any length, so
any meter) and ticks per quarter (``tpq``). Both sides must use the same ticks (same ``tpq``); nothing here
depends on the tokenizer.

Which notes count:
- onset-based metrics (groove, pitch-class entropy, onset F1) use the notes whose onset lies in the span
  ``[bar_ticks[0], bar_ticks[-1])`` (:func:`score_span` selects them; the single-metric functions use what
  they are given, and the grid functions ignore onsets outside the bars);
- content preservation uses every note that *sounds* in a frame, so a note sustained into the span from
  before counts in the frames it covers;
- register and key metrics (:func:`register_err`, :func:`register_off12`, :func:`out_of_key`) also use the
  onsets in the span, and compare the generated notes with the ORIGINAL notes of the target track in the
  prompt's context bars (``context``, never the span itself); they are pitch measures, so NaN on drum tracks.

Directions (:data:`HIGHER_IS_BETTER`): CP, CP-active, GS, onset precision/recall/F1 and onset-only F1 are
better higher; GS gap, PCHE difference, register error, register off by an octave, out-of-key share, control
errors and bits per note are better lower.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from midirwkv.errors import BadRequestError
from midirwkv.eval.notes import (
    NoteArray,
    NoteInput,
    as_note_array,
    check_bars,
    check_tpq,
)
from midirwkv.eval.pitch import (
    out_of_key,
    pch_entropy,
    pche_diff,
    register_err,
    register_off12,
)
from midirwkv.music.controls import DENSITY_MAX, DUR_UNITS_PER_QUARTER, POLY_RANGE, BarControls, BarNotes

FRAMES_PER_BAR = 16
"""Content preservation: chroma frames per bar (each bar is cut into 16 equal frames, whatever its meter)."""
CP_HALF_WINDOW = 4
"""Content preservation: chroma is averaged over frames i-4 .. i+4 (a 9-frame window, cut at the span ends)."""
GRID_CELLS_PER_QUARTER = 8
"""Groove grid and onset tolerance: a 32nd note is tpq / 8 ticks."""
DENSITY_CAP = DENSITY_MAX
"""Density control token saturates: ``ACBarNoteDensity_18+`` means 18 or more notes."""
POLYPHONY_CAP = POLY_RANGE[1]
"""Polyphony control tokens run 1..6; larger measured values are read as 6."""
DURATION_FIELDS = ("dur_whole", "dur_half", "dur_quarter", "dur_eighth", "dur_sixteenth")
"""Per-bar duration flags (0/1: a note of exactly this length occurs in the bar)."""
CONTROL_FIELDS = ("density", "poly_min", "poly_max", *DURATION_FIELDS)
"""Every per-bar control scored by :func:`control_adherence`, in report order."""

HIGHER_IS_BETTER: dict[str, bool] = {
    "cp": True,
    "cp_active": True,
    "gs": True,
    "gs_gap": False,
    "pche_diff": False,
    "onset_precision": True,
    "onset_recall": True,
    "onset_f1": True,
    "onset_only_f1": True,
    "register_err": False,
    "register_off12": False,
    "out_of_key": False,
    "bits_per_note": False,
    **{f"ctrl_{name}_err": False for name in (*CONTROL_FIELDS, "dur", "all")},
}
"""Direction of every comparative key of :func:`score_span` (plus ``bits_per_note``): True = higher is better.
Descriptive keys (``gs_orig``, ``pch_entropy``, ``n_notes``, ``out_of_key_orig`` ...) have no direction and are not
listed."""


# ----------------------------------------------------------------------------------------------- notes


# ----------------------------------------------------------------------------------- content preservation


def frame_edges(bar_ticks: Sequence[int] | np.ndarray) -> np.ndarray:
    """Frame boundaries in ticks (float): each bar cut into :data:`FRAMES_PER_BAR` equal frames."""
    bars = check_bars(bar_ticks).astype(np.float64)
    steps = np.arange(FRAMES_PER_BAR) / FRAMES_PER_BAR                         # (16,)
    edges = bars[:-1, None] + np.diff(bars)[:, None] * steps[None, :]          # (n_bars, 16)
    return np.append(edges.reshape(-1), bars[-1])                              # (n_bars * 16 + 1,)


def chroma_frames(notes: NoteInput, bar_ticks: Sequence[int] | np.ndarray) -> np.ndarray:
    """Raw chroma per frame, shape (n_bars * 16, 12): how many notes of each pitch class sound in the frame.

    A note sounds in frame ``[a, b)`` when ``onset < b`` and ``onset + max(duration, 1) > a`` (a zero-length
    note sounds in the frame of its onset). Counts, not 0/1: a doubled pitch class weighs more.
    """
    notes = as_note_array(notes)
    edges = frame_edges(bar_ticks)
    n_frames = len(edges) - 1
    ends = notes.onset + np.maximum(notes.duration, 1)
    keep = (notes.onset < edges[-1]) & (ends > edges[0])
    onset, ends, pc = notes.onset[keep], ends[keep], notes.pitch[keep] % 12
    first = np.clip(np.searchsorted(edges, onset, side="right") - 1, 0, n_frames - 1)
    last = np.clip(np.searchsorted(edges, ends, side="left") - 1, 0, n_frames - 1)
    # Difference array over frames: +1 where a note starts sounding, -1 one frame after it stops.
    diff = np.zeros((n_frames + 1, 12), np.float64)
    np.add.at(diff, (first, pc), 1.0)
    np.add.at(diff, (last + 1, pc), -1.0)
    return np.cumsum(diff[:-1], axis=0)


def _smoothed_chroma(chroma: np.ndarray) -> np.ndarray:
    """L2-normalise each frame (silent frames stay 0), then sum over frames i-4 .. i+4.

    A sum and a mean over the window differ by a positive factor per frame, which cosine similarity ignores,
    so the window is simply cut at the span's ends.
    """
    norms = np.linalg.norm(chroma, axis=1, keepdims=True)
    unit = np.divide(chroma, norms, out=np.zeros_like(chroma), where=norms > 0)
    padded = np.concatenate([np.zeros((1, 12)), np.cumsum(unit, axis=0)])     # (F + 1, 12)
    n = len(chroma)
    idx = np.arange(n)
    hi = np.minimum(idx + CP_HALF_WINDOW + 1, n)
    lo = np.maximum(idx - CP_HALF_WINDOW, 0)
    return padded[hi] - padded[lo]                                             # (F, 12)


def _frame_cosines(gen: NoteInput, orig: NoteInput, bar_ticks: Sequence[int] | np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame cosine similarity of the smoothed chroma (0 where either side is all zero) and the mask of
    frames where either side has a sounding note (before smoothing)."""
    raw_g, raw_o = chroma_frames(gen, bar_ticks), chroma_frames(orig, bar_ticks)
    g, o = _smoothed_chroma(raw_g), _smoothed_chroma(raw_o)
    ng, no = np.linalg.norm(g, axis=1), np.linalg.norm(o, axis=1)
    denom = ng * no
    # A smoothed frame is a sum of non-negative unit vectors: its norm is 0 or >= 1, so this floor is safe.
    valid = denom > 1e-9
    cos = np.zeros(len(g))
    cos[valid] = np.einsum("fc,fc->f", g[valid], o[valid]) / denom[valid]
    active = (raw_g.sum(axis=1) > 0) | (raw_o.sum(axis=1) > 0)
    return np.clip(cos, 0.0, 1.0), active


def content_preservation(gen: NoteInput, orig: NoteInput, bar_ticks: Sequence[int] | np.ndarray) -> float:
    """Content preservation (the paper's version), in [0, 1], higher is better.

    16 frames per bar; per frame the 12-bin chroma of the sounding notes (:func:`chroma_frames`), L2-normalised,
    then averaged over a +-4-frame window; the score is the mean over all frames of the cosine similarity of
    generated and original smoothed chroma, where a frame that is all zero on either side scores 0. So silent
    stretches pull the score down even when both sides are silent there: two identical spans score below 1
    when they hold frames more than 4 frames away from any sounding note (see
    :func:`content_preservation_active`). Two empty spans score 0.
    """
    cos, _ = _frame_cosines(gen, orig, bar_ticks)
    return float(cos.mean())


def content_preservation_active(gen: NoteInput, orig: NoteInput, bar_ticks: Sequence[int] | np.ndarray) -> float:
    """Content preservation over active frames only, in [0, 1], higher is better.

    The same per-frame cosines as :func:`content_preservation`, averaged only over frames where at least one
    side has a sounding note (before smoothing). Identical spans score exactly 1. When neither side sounds
    anywhere (two empty spans: nothing to disagree on) the value is defined as 1.0.
    """
    cos, active = _frame_cosines(gen, orig, bar_ticks)
    if not active.any():
        return 1.0
    return float(cos[active].mean())


# ------------------------------------------------------------------------------------------------- groove


def onset_grids(notes: NoteInput, bar_ticks: Sequence[int] | np.ndarray, tpq: int) -> list[np.ndarray]:
    """Per bar, a 0/1 onset grid with one cell per 32nd note (``tpq / 8`` ticks).

    A bar has ``max(1, round(bar_length / (tpq / 8)))`` cells (32 in 4/4, 24 in 3/4 or 6/8). An onset falls in
    cell ``floor((onset - bar_start) / (tpq / 8))``, clipped to the last cell; onsets outside the bars are
    ignored.
    """
    notes = as_note_array(notes)
    bars = check_bars(bar_ticks)
    tpq = check_tpq(tpq)
    cell = tpq / GRID_CELLS_PER_QUARTER
    bar_of = np.searchsorted(bars, notes.onset, side="right") - 1
    grids = []
    for b in range(len(bars) - 1):
        n_cells = max(1, round((bars[b + 1] - bars[b]) / cell))
        grid = np.zeros(n_cells, bool)
        onsets = notes.onset[bar_of == b]
        grid[np.clip(((onsets - bars[b]) // cell).astype(np.int64), 0, n_cells - 1)] = True
        grids.append(grid)
    return grids


def groove_similarity(notes: NoteInput, bar_ticks: Sequence[int] | np.ndarray, tpq: int) -> float:
    """Groove similarity of one span (the paper's version), in [0, 1], higher is better (the paper's reading).

    ``1 - mean over adjacent bar pairs (k, k+1) of hamming(grid_k, grid_k+1) / grid size`` with the 32nd-note
    onset grids of :func:`onset_grids`. When the two bars differ in length (a meter change) the shorter grid is
    padded with empty cells and the size is the longer one. Empty bars have empty grids, so an empty span
    scores 1. A 1-bar span has no adjacent pair: the value is NaN (undefined; :mod:`midirwkv.eval.stats`
    drops NaNs).

    Real music scores 0.86-0.90 on its own, and a model can beat it by repeating one bar; compare against the
    original's value with :func:`groove_gap`.
    """
    grids = onset_grids(notes, bar_ticks, tpq)
    if len(grids) < 2:
        return math.nan
    distances = []
    for a, b in itertools.pairwise(grids):
        size = max(len(a), len(b))
        pa, pb = np.zeros(size, bool), np.zeros(size, bool)
        pa[: len(a)], pb[: len(b)] = a, b
        distances.append(np.count_nonzero(pa != pb) / size)
    return float(1.0 - np.mean(distances))


def groove_gap(gen: NoteInput, orig: NoteInput, bar_ticks: Sequence[int] | np.ndarray, tpq: int) -> float:
    """``|GS(generated) - GS(original)|``, in [0, 1], lower is better; NaN for a 1-bar span."""
    return abs(groove_similarity(gen, bar_ticks, tpq) - groove_similarity(orig, bar_ticks, tpq))


# ---------------------------------------------------------------------------------------- pitch classes


# --------------------------------------------------------------------------------------------- onset F1


@dataclass(frozen=True)
class OnsetScores:
    """Onset precision, recall and F1 (all higher is better) and the number of matched note pairs."""

    precision: float
    recall: float
    f1: float
    matched: int


def _match_sorted(a: np.ndarray, b: np.ndarray, tol: float) -> int:
    """Maximum one-to-one matching of two sorted 1-D point sets, pairs at most ``tol`` apart.

    Two pointers: if the smaller head cannot reach the other head it can reach nothing later either, so it is
    dropped; otherwise pairing the two heads never loses a match (exchange argument). O(len(a) + len(b)).
    """
    i = j = matched = 0
    while i < len(a) and j < len(b):
        if a[i] < b[j] - tol:
            i += 1
        elif b[j] < a[i] - tol:
            j += 1
        else:
            matched += 1
            i += 1
            j += 1
    return matched


def _onset_scores(gen: NoteInput, orig: NoteInput, tolerance_ticks: float, by_pitch: bool) -> OnsetScores:
    """Precision / recall / F1 of a maximum one-to-one onset matching, within each pitch or over all notes."""
    gen, orig = as_note_array(gen), as_note_array(orig)
    if tolerance_ticks < 0 or not math.isfinite(tolerance_ticks):
        raise BadRequestError("tolerance_ticks must be a finite number >= 0", argument="tolerance_ticks",
                              value=tolerance_ticks, fix="pass tpq / 8 for the paper's 32nd-note tolerance")
    if len(gen) == 0 and len(orig) == 0:
        return OnsetScores(1.0, 1.0, 1.0, 0)
    if len(gen) == 0 or len(orig) == 0:
        return OnsetScores(0.0, 0.0, 0.0, 0)
    if by_pitch:
        matched = 0
        for pitch in np.intersect1d(gen.pitch, orig.pitch):
            matched += _match_sorted(np.sort(gen.onset[gen.pitch == pitch]),
                                     np.sort(orig.onset[orig.pitch == pitch]), tolerance_ticks)
    else:
        matched = _match_sorted(np.sort(gen.onset), np.sort(orig.onset), tolerance_ticks)
    precision, recall = matched / len(gen), matched / len(orig)
    f1 = 0.0 if matched == 0 else 2 * precision * recall / (precision + recall)
    return OnsetScores(precision, recall, f1, matched)


def onset_f1(gen: NoteInput, orig: NoteInput, tolerance_ticks: float) -> OnsetScores:
    """Onset precision / recall / F1 of generated notes against original notes, higher is better.

    A generated and an original note match when they have the same pitch and their onsets are at most
    ``tolerance_ticks`` apart (the paper: a 32nd note, ``tpq / 8``, in the same ticks on both sides). Each
    note matches at most once, and the matching is a maximum one (per pitch, :func:`_match_sorted`).
    ``precision = matched / n_generated``, ``recall = matched / n_original``, F1 their harmonic mean.
    Empty sides: both empty gives 1, 1, 1 (nothing missed, nothing invented); exactly one empty gives 0, 0, 0.
    """
    return _onset_scores(gen, orig, tolerance_ticks, by_pitch=True)


def onset_only_f1(gen: NoteInput, orig: NoteInput, tolerance_ticks: float) -> OnsetScores:
    """Rhythm only: :func:`onset_f1` with pitch ignored, higher is better.

    A generated and an original note match when their onsets are at most ``tolerance_ticks`` apart, whatever
    their pitches; the matching is still one-to-one and maximum, note by note, so a 3-note chord against a
    single note at the same onset matches once (precision 1/3, recall 1). Same empty-side values as
    :func:`onset_f1`. Never below :func:`onset_f1` of the same notes (every same-pitch match is a match here).
    """
    return _onset_scores(gen, orig, tolerance_ticks, by_pitch=False)


# ------------------------------------------------------------------------------------------ register and key


# ------------------------------------------------------------------------------------ control adherence


@dataclass(frozen=True)
class ControlErrors:
    """Per-bar absolute control errors and their means (all lower is better).

    ``per_bar[k][field]`` is ``|requested - measured|`` for bar k, or None where the field was not requested
    (None) or not measured. ``means[field]`` averages the bars where it was scored (NaN where none was);
    ``means["dur"]`` averages every scored duration flag of every bar, ``means["all"]`` every scored number
    (density counts in notes, so it dominates ``all`` when far off).
    """

    per_bar: list[dict[str, float | None]]
    means: dict[str, float]


def _control_value(controls: Any, name: str) -> float | None:
    value = controls.get(name) if isinstance(controls, Mapping) else getattr(controls, name, None)
    if value is None:
        return None
    value = float(value)  # flags may be bools
    if name == "density":
        return min(value, DENSITY_CAP)
    if name in ("poly_min", "poly_max"):
        return min(value, POLYPHONY_CAP)
    return value


def control_adherence(requested: Sequence[Any], measured: Sequence[Any]) -> ControlErrors:
    """Per bar ``|requested - measured|`` for density, polyphony min and max and each duration flag.

    ``requested`` and ``measured`` hold one entry per span bar: a mapping or an object with the fields of
    :data:`CONTROL_FIELDS` (``music.controls.BarControls`` has them); a missing or None field means "not
    requested" (or not measured, e.g. polyphony of a drum track) and is not scored. Density is capped at
    :data:`DENSITY_CAP` and polyphony at :data:`POLYPHONY_CAP` on both sides, as the tokens are. Lower is
    better; 0 everywhere means every requested control was met.
    """
    if len(requested) != len(measured):
        raise BadRequestError("requested and measured controls differ in length", argument="measured",
                              value=(len(requested), len(measured)), fix="pass one controls entry per span bar")
    per_bar: list[dict[str, float | None]] = []
    for req, mea in zip(requested, measured):
        row: dict[str, float | None] = {}
        for name in CONTROL_FIELDS:
            r, m = _control_value(req, name), _control_value(mea, name)
            row[name] = None if r is None or m is None else abs(r - m)
        per_bar.append(row)

    def _mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else math.nan

    means = {name: _mean([row[name] for row in per_bar if row[name] is not None]) for name in CONTROL_FIELDS}
    means["dur"] = _mean([row[n] for row in per_bar for n in DURATION_FIELDS if row[n] is not None])
    means["all"] = _mean([v for row in per_bar for v in row.values() if v is not None])
    return ControlErrors(per_bar, means)


def measure_bar_controls(notes: NoteInput, bar_ticks: Sequence[int] | np.ndarray, tpq: int,
                         is_drum: bool = False) -> list[BarControls]:
    """The exact per-bar controls of ``notes`` (one :class:`~midirwkv.music.controls.BarControls` per bar).

    Each note counts in the bar of its onset (onsets outside the bars are ignored); polyphony compares onset
    ticks for equality and durations are rounded to 1/48 quarter note, then
    :meth:`BarControls.compute <midirwkv.music.controls.BarControls.compute>` does the counting. Exact on
    tokenizer-quantised notes (what generation decodes to). Drum tracks: density only.
    """
    notes = as_note_array(notes)
    bars = check_bars(bar_ticks)
    tpq = check_tpq(tpq)
    bar_of = np.searchsorted(bars, notes.onset, side="right") - 1
    units = np.rint(notes.duration * (DUR_UNITS_PER_QUARTER / tpq)).astype(np.int64)
    out = []
    for b in range(len(bars) - 1):
        sel = bar_of == b
        bar_notes = BarNotes(tuple((notes.onset[sel] - bars[b]).tolist()), tuple(units[sel].tolist()))
        out.append(BarControls.compute(bar_notes, is_drum=is_drum))
    return out


# ------------------------------------------------------------------------------------------------ NLL


def bits_per_note(total_nll_nats: float, n_notes: int) -> float:
    """Negative log-likelihood in bits per note: ``total_nll_nats / ln 2 / n_notes``, lower is better.

    ``total_nll_nats`` is the summed token cross-entropy (natural log) of the span's tokens. A span with no
    notes gives NaN (undefined; stats drop NaNs).
    """
    if not math.isfinite(total_nll_nats) or total_nll_nats < 0:
        raise BadRequestError("total_nll_nats must be a finite number >= 0", argument="total_nll_nats",
                              value=total_nll_nats, fix="pass the summed cross-entropy of the span in nats")
    if isinstance(n_notes, bool) or not isinstance(n_notes, (int, np.integer)) or n_notes < 0:
        raise BadRequestError("n_notes must be an integer >= 0", argument="n_notes", value=n_notes,
                              fix="pass the number of notes in the span")
    if n_notes == 0:
        return math.nan
    return float(total_nll_nats) / math.log(2) / int(n_notes)


# ------------------------------------------------------------------------------------------- all in one


def score_span(gen: NoteInput, orig: NoteInput, bar_ticks: Sequence[int] | np.ndarray, tpq: int,
               requested_controls: Sequence[Any] | None = None,
               measured_controls: Sequence[Any] | None = None, is_drum: bool = False,
               context: NoteInput | None = None) -> dict[str, float]:
    """Every metric of one infilled span, generated (``gen``) against original (``orig``), in one flat dict.

    Both note sets are in the same ticks (``tpq`` ticks per quarter); ``bar_ticks`` holds the n_bars + 1 span
    boundaries. Onset-based metrics use the notes with an onset inside the span; content preservation uses
    every note sounding inside it. Keys (always all present; directions in :data:`HIGHER_IS_BETTER`):

    - ``n_bars``, ``n_notes``, ``n_notes_orig``: span size and note counts (onsets in the span);
    - ``cp``, ``cp_active``: :func:`content_preservation`, :func:`content_preservation_active`;
    - ``gs``, ``gs_orig``, ``gs_gap``: :func:`groove_similarity` of each side and their absolute difference
      (NaN for a 1-bar span);
    - ``pch_entropy``, ``pch_entropy_orig``, ``pche_diff``: :func:`pch_entropy` of each side, the difference;
    - ``onset_precision``, ``onset_recall``, ``onset_f1``: :func:`onset_f1` with a 32nd-note tolerance;
    - ``onset_only_f1``: :func:`onset_only_f1` (pitch ignored), same tolerance;
    - ``register_err``: :func:`register_err` (NaN when a side is empty);
    - ``register_off12``, ``out_of_key``: :func:`register_off12` and :func:`out_of_key` of the generated notes
      against ``context``; ``register_off12_orig``, ``out_of_key_orig``: the same for the original notes (what
      the music itself does: real spans also leave the context's seven classes). NaN without context notes
      or without notes on the scored side;
    - ``ctrl_<field>_err`` for each of :data:`CONTROL_FIELDS`, ``ctrl_dur_err``, ``ctrl_all_err``: means of
      :func:`control_adherence`; NaN when no controls were requested or the field was never requested.

    ``requested_controls`` holds one entry per span bar (e.g. the original bars' ``BarControls``);
    ``measured_controls`` defaults to :func:`measure_bar_controls` of ``gen`` (``is_drum``: density only).
    ``context``: the ORIGINAL notes of the target track in the prompt's context bars; notes with an onset
    inside the span are dropped from it, so the whole context window may be passed. None: no context (the
    context metrics are NaN). ``is_drum``: the pitch measures (``register_*``, ``out_of_key*``) are NaN,
    a drum "pitch" being an instrument. Empty sides never raise: see each metric for its defined value.
    """
    bars = check_bars(bar_ticks)
    tpq = check_tpq(tpq)
    gen_all, orig_all = as_note_array(gen), as_note_array(orig)
    gen_in, orig_in = gen_all.in_span(int(bars[0]), int(bars[-1])), orig_all.in_span(int(bars[0]), int(bars[-1]))
    gs, gs_orig = groove_similarity(gen_in, bars, tpq), groove_similarity(orig_in, bars, tpq)
    h, h_orig = pch_entropy(gen_in), pch_entropy(orig_in)
    onsets = onset_f1(gen_in, orig_in, tpq / GRID_CELLS_PER_QUARTER)
    rhythm = onset_only_f1(gen_in, orig_in, tpq / GRID_CELLS_PER_QUARTER)
    ctx = as_note_array(context) if context is not None else NoteArray.empty()
    outside = (ctx.onset < bars[0]) | (ctx.onset >= bars[-1])
    ctx = NoteArray(ctx.onset[outside], ctx.duration[outside], ctx.pitch[outside])
    out: dict[str, float] = {
        "n_bars": len(bars) - 1,
        "n_notes": len(gen_in),
        "n_notes_orig": len(orig_in),
        "cp": content_preservation(gen_all, orig_all, bars),
        "cp_active": content_preservation_active(gen_all, orig_all, bars),
        "gs": gs,
        "gs_orig": gs_orig,
        "gs_gap": groove_gap(gen_in, orig_in, bars, tpq),
        "pch_entropy": h,
        "pch_entropy_orig": h_orig,
        "pche_diff": pche_diff(gen_in, orig_in),
        "onset_precision": onsets.precision,
        "onset_recall": onsets.recall,
        "onset_f1": onsets.f1,
        "onset_only_f1": rhythm.f1,
        "register_err": math.nan if is_drum else register_err(gen_in, orig_in),
        "register_off12": math.nan if is_drum else register_off12(gen_in, ctx),
        "register_off12_orig": math.nan if is_drum else register_off12(orig_in, ctx),
        "out_of_key": math.nan if is_drum else out_of_key(gen_in, ctx),
        "out_of_key_orig": math.nan if is_drum else out_of_key(orig_in, ctx),
    }
    means: dict[str, float] = {}
    if requested_controls is not None:
        if len(requested_controls) != len(bars) - 1:
            raise BadRequestError("one requested controls entry per span bar is needed",
                                  argument="requested_controls", value=len(requested_controls),
                                  fix=f"pass {len(bars) - 1} entries")
        if measured_controls is None:
            measured_controls = measure_bar_controls(gen_in, bars, tpq, is_drum=is_drum)
        means = control_adherence(requested_controls, measured_controls).means
    elif measured_controls is not None:
        raise BadRequestError("measured_controls given without requested_controls", argument="requested_controls",
                              value=None, fix="pass the requested controls too (one per span bar), or neither")
    for name in (*CONTROL_FIELDS, "dur", "all"):
        out[f"ctrl_{name}_err"] = means.get(name, math.nan)
    return out
