"""Pitch measures of a span: pitch-class entropy, register (mean pitch against the original and the context) and
key (the context's seven most used pitch classes). :func:`midirwkv.eval.metrics.score_span` passes the onsets in
the span; the NaN rules are in each function."""

from __future__ import annotations

import math

import numpy as np

from midirwkv.errors import BadRequestError
from midirwkv.eval.notes import (
    NoteInput,
    as_note_array,
)

REGISTER_OFF_SEMITONES = 12
""":func:`register_off12`: a span is off register when its mean pitch is MORE than this far from the context's."""


KEY_SIZE = 7
""":func:`key_pitch_classes`: the context's key is its 7 most used pitch classes (a diatonic scale's size)."""


def pitch_class_histogram(notes: NoteInput) -> np.ndarray:
    """12 counts: how many note onsets have each pitch class (C = 0)."""
    notes = as_note_array(notes)
    return np.bincount(notes.pitch % 12, minlength=12).astype(np.float64)


def pch_entropy(notes: NoteInput) -> float:
    """Shannon entropy in bits of the pitch-class histogram of the note onsets, in [0, log2 12].

    Descriptive (no direction). No notes: defined as 0.0 (an empty histogram carries no uncertainty).
    """
    hist = pitch_class_histogram(notes)
    total = hist.sum()
    if total == 0:
        return 0.0
    p = hist[hist > 0] / total
    return float(-(p * np.log2(p)).sum() + 0.0)  # + 0.0 turns -0.0 (one pitch class) into 0.0


def pche_diff(gen: NoteInput, orig: NoteInput) -> float:
    """Pitch-class histogram entropy difference ``|H(generated) - H(original)|`` in bits, lower is better.

    Uses :func:`pch_entropy` on each side (an empty side has entropy 0).
    """
    return abs(pch_entropy(gen) - pch_entropy(orig))


def mean_pitch(notes: NoteInput) -> float:
    """Mean MIDI pitch of the notes (each note counts once); NaN when there are none."""
    notes = as_note_array(notes)
    return float(notes.pitch.mean()) if len(notes) else math.nan


def register_err(gen: NoteInput, orig: NoteInput) -> float:
    """Register error ``|mean pitch(generated) - mean pitch(original)|`` in semitones, lower is better.

    NaN when either side has no notes (no register to compare). A span transposed by an octave scores 12.
    """
    return abs(mean_pitch(gen) - mean_pitch(orig))


def register_off12(gen: NoteInput, context: NoteInput) -> float:
    """1.0 when the generated notes' mean pitch is more than :data:`REGISTER_OFF_SEMITONES` (12) semitones from
    the mean pitch of the track's context notes, else 0.0; lower is better.

    ``context``: the original notes of the same track around the span (not the span itself). Its mean over
    prompts is the share of spans more than an octave off the track's register. Exactly 12 apart is not off.
    NaN when either side has no notes.
    """
    gap = abs(mean_pitch(gen) - mean_pitch(context))
    if math.isnan(gap):
        return math.nan
    return 1.0 if gap > REGISTER_OFF_SEMITONES else 0.0


def key_pitch_classes(context: NoteInput, size: int = KEY_SIZE) -> np.ndarray:
    """The ``size`` (7) most used pitch classes of ``context`` (counted note by note), sorted ascending.

    Ties are broken toward the lower pitch class (C = 0 first), so the set is deterministic. Only classes
    used at least once count: a context with fewer distinct classes gives all of them (never an unused one).
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= 12:
        raise BadRequestError("size must be an integer in 1..12", argument="size", value=size,
                              fix=f"pass {KEY_SIZE} (a diatonic scale)")
    hist = pitch_class_histogram(context)
    order = np.lexsort((np.arange(12), -hist))          # most used first, then the lower class
    chosen = [int(pc) for pc in order[:size] if hist[pc] > 0]
    return np.array(sorted(chosen), dtype=np.int64)


def out_of_key(gen: NoteInput, context: NoteInput) -> float:
    """Share of generated notes whose pitch class is not among :func:`key_pitch_classes` of ``context``, in
    [0, 1], lower is better.

    Counted note by note (a repeated out-of-key pitch counts each time). ``context``: the original notes of the
    same track around the span. NaN when either side has no notes.
    """
    gen, context = as_note_array(gen), as_note_array(context)
    if len(gen) == 0 or len(context) == 0:
        return math.nan
    key = key_pitch_classes(context)
    return float(np.mean(~np.isin(gen.pitch % 12, key)))
