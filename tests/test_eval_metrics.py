"""Span metrics on hand-made note arrays with known answers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from midirwkv.errors import BadRequestError
from midirwkv.eval.metrics import (
    CONTROL_FIELDS,
    HIGHER_IS_BETTER,
    bits_per_note,
    chroma_frames,
    content_preservation,
    content_preservation_active,
    control_adherence,
    groove_gap,
    groove_similarity,
    measure_bar_controls,
    onset_f1,
    onset_grids,
    onset_only_f1,
    score_span,
)
from midirwkv.eval.notes import NoteArray, as_note_array
from midirwkv.eval.pitch import (
    key_pitch_classes,
    mean_pitch,
    out_of_key,
    pch_entropy,
    pche_diff,
    register_err,
    register_off12,
)
from midirwkv.music.controls import BarControls, control_field_names

TPQ = 480
BAR_44 = 4 * TPQ
BAR_34 = 3 * TPQ


def notes(*triples: tuple[int, int, int]) -> NoteArray:
    """NoteArray from (onset, duration, pitch) triples."""
    if not triples:
        return NoteArray.empty()
    onset, duration, pitch = zip(*triples)
    return NoteArray(np.array(onset), np.array(duration), np.array(pitch))


def shifted(n: NoteArray, ticks: int = 0, semitones: int = 0) -> NoteArray:
    return NoteArray(n.onset + ticks, n.duration, n.pitch + semitones)


def bars(*lengths: int, start: int = 0) -> list[int]:
    return [start, *(start + int(x) for x in np.cumsum(lengths))]


# A 2-bar 4/4 melody with a chord: used by the identity tests.
MELODY = notes((0, 480, 60), (0, 480, 64), (480, 240, 62), (720, 240, 65), (960, 960, 67),
               (1920, 480, 69), (2400, 480, 67), (2880, 960, 60), (2880, 960, 64))


# ----------------------------------------------------------------------------------------- identity


def test_identical_span_scores_perfectly() -> None:
    s = score_span(MELODY, MELODY, bars(BAR_44, BAR_44), TPQ)
    assert s["cp_active"] == pytest.approx(1.0)
    assert s["pche_diff"] == 0.0
    assert s["onset_f1"] == s["onset_precision"] == s["onset_recall"] == 1.0
    assert s["gs_gap"] == 0.0
    assert s["gs"] == s["gs_orig"]
    assert s["n_bars"] == 2 and s["n_notes"] == s["n_notes_orig"] == len(MELODY)
    # The melody sounds in every frame, so the paper's CP is also 1.
    assert s["cp"] == pytest.approx(1.0)


def test_score_span_keys_are_stable_and_directed() -> None:
    s = score_span(MELODY, MELODY, bars(BAR_44, BAR_44), TPQ)
    expected = {"n_bars", "n_notes", "n_notes_orig", "cp", "cp_active", "gs", "gs_orig", "gs_gap", "pch_entropy",
                "pch_entropy_orig", "pche_diff", "onset_precision", "onset_recall", "onset_f1", "onset_only_f1",
                "register_err", "register_off12", "register_off12_orig", "out_of_key", "out_of_key_orig",
                *(f"ctrl_{n}_err" for n in (*CONTROL_FIELDS, "dur", "all"))}
    assert set(s) == expected
    assert all(math.isnan(s[f"ctrl_{n}_err"]) for n in (*CONTROL_FIELDS, "dur", "all"))
    assert {k for k in HIGHER_IS_BETTER if k != "bits_per_note"} <= set(s)


# ------------------------------------------------------------------------------ content preservation


def test_cp_counts_silent_frames_as_zero_and_active_ignores_them() -> None:
    # One quarter note in a 4/4 bar: sounds in frames 0-3; smoothing (+-4) reaches frames 0-7; frames 8-15 are
    # silent on both sides and score 0 in the paper's CP.
    n = notes((0, TPQ, 60))
    b = bars(BAR_44)
    assert content_preservation(n, n, b) == pytest.approx(0.5)
    assert content_preservation_active(n, n, b) == pytest.approx(1.0)


def test_semitone_transposition_known_cosine() -> None:
    # Sustained C-E-F against C#-F-F#: one shared pitch class of three on each side -> cosine 1/3 everywhere.
    chord = notes((0, BAR_44, 60), (0, BAR_44, 64), (0, BAR_44, 65))
    up = shifted(chord, semitones=1)
    b = bars(BAR_44)
    assert content_preservation(up, chord, b) == pytest.approx(1 / 3)
    assert content_preservation_active(up, chord, b) == pytest.approx(1 / 3)
    # Onsets: only F (65) is shared, same onset -> 1 match of 3 on each side.
    f = onset_f1(up, chord, TPQ / 8)
    assert (f.matched, f.precision, f.recall, f.f1) == (1, pytest.approx(1 / 3), pytest.approx(1 / 3),
                                                        pytest.approx(1 / 3))


def test_semitone_transposition_of_a_melody_scores_zero() -> None:
    # C E G# C against C# F A C#: disjoint pitch-class sets, so every smoothed frame is orthogonal.
    line = notes((0, 480, 60), (480, 480, 64), (960, 480, 68), (1440, 480, 72))
    up = shifted(line, semitones=1)
    s = score_span(up, line, bars(BAR_44), TPQ)
    assert s["onset_f1"] == 0.0
    assert s["cp"] == 0.0 and s["cp_active"] == 0.0
    assert s["pche_diff"] == pytest.approx(0.0)          # a transposition keeps the histogram's shape
    assert s["pch_entropy"] == pytest.approx(1.5)        # counts 2, 1, 1
    assert math.isnan(s["gs"]) and math.isnan(s["gs_gap"])   # 1 bar: no adjacent pair


def test_chroma_frames_in_three_four() -> None:
    # A 3/4 bar is 1440 ticks: 16 frames of 90 ticks. A quarter note (480 ticks) covers frames 0..5.
    c = chroma_frames(notes((0, TPQ, 62)), bars(BAR_34))
    assert c.shape == (16, 12)
    assert np.flatnonzero(c[:, 2]).tolist() == [0, 1, 2, 3, 4, 5]
    assert c.sum() == 6


def test_chroma_counts_notes_and_sustain_from_before_the_span() -> None:
    # Two octaves of C count twice; a note started before the span sounds in the frames it covers.
    c = chroma_frames(notes((0, 240, 48), (0, 240, 60), (-480, 600, 67)), bars(BAR_44, start=0))
    assert c[0, 0] == 2 and c[1, 0] == 2 and c[2, 0] == 0
    assert c[0, 7] == 1 and c[1, 7] == 0                 # G sounds until tick 120: only frame 0 (0..120)


def test_cp_with_bars_of_different_lengths() -> None:
    # 4/4 then 3/4: frames are per bar, so each bar has 16 frames whatever its length.
    b = bars(BAR_44, BAR_34)
    n = notes((0, BAR_44, 60), (BAR_44, BAR_34, 67))
    assert chroma_frames(n, b).shape == (32, 12)
    assert content_preservation(n, n, b) == pytest.approx(1.0)
    other = notes((0, BAR_44, 60), (BAR_44, BAR_34, 60))
    # Frames 0-11 only see C on both sides (cos 1); frames 12-19 mix C and G on one side; 20-31 only G vs C (0).
    cp = content_preservation(other, n, b)
    assert 12 / 32 < cp < 20 / 32


# ------------------------------------------------------------------------------------------- groove


def test_groove_two_bar_pattern_known_value() -> None:
    quarters = [(t, 240, 60) for t in range(0, BAR_44, 480)]
    eighths = [(BAR_44 + t, 120, 60) for t in range(0, BAR_44, 240)]
    n = notes(*quarters, *eighths)
    grids = onset_grids(n, bars(BAR_44, BAR_44), TPQ)
    assert [len(g) for g in grids] == [32, 32]
    assert np.flatnonzero(grids[0]).tolist() == [0, 8, 16, 24]
    assert np.flatnonzero(grids[1]).tolist() == list(range(0, 32, 4))
    # 4 cells differ out of 32.
    assert groove_similarity(n, bars(BAR_44, BAR_44), TPQ) == pytest.approx(1 - 4 / 32)
    # A third bar equal to the second: mean of 4/32 and 0.
    third = [(2 * BAR_44 + t, 120, 60) for t in range(0, BAR_44, 240)]
    n3 = notes(*quarters, *eighths, *third)
    assert groove_similarity(n3, bars(BAR_44, BAR_44, BAR_44), TPQ) == pytest.approx(1 - 2 / 32)
    # Gap against a steady-eighths original (GS 1).
    orig = notes(*[(t, 120, 60) for t in range(0, 2 * BAR_44, 240)])
    assert groove_gap(n, orig, bars(BAR_44, BAR_44), TPQ) == pytest.approx(4 / 32)


def test_groove_three_four() -> None:
    b = bars(BAR_34, BAR_34)
    n = notes((0, 480, 60), (480, 480, 60), (960, 480, 60), (BAR_34, BAR_34, 60))
    grids = onset_grids(n, b, TPQ)
    assert [len(g) for g in grids] == [24, 24]
    assert groove_similarity(n, b, TPQ) == pytest.approx(1 - 2 / 24)


def test_groove_six_eight() -> None:
    # 6/8: dotted quarters in bar 1 (cells 0, 12), six eighths in bar 2 (cells 0, 4, ..., 20): 4 cells differ.
    bar_68 = 6 * TPQ // 2
    b = bars(bar_68, bar_68)
    n = notes((0, 720, 60), (720, 720, 60), *[(bar_68 + t, 240, 62) for t in range(0, bar_68, 240)])
    grids = onset_grids(n, b, TPQ)
    assert [np.flatnonzero(g).tolist() for g in grids] == [[0, 12], [0, 4, 8, 12, 16, 20]]
    assert groove_similarity(n, b, TPQ) == pytest.approx(1 - 4 / 24)


def test_groove_meter_change_pads_the_shorter_bar() -> None:
    b = bars(BAR_44, BAR_34)
    n = notes((0, 480, 60), (1440, 480, 60), (BAR_44, 480, 60))
    assert groove_similarity(n, b, TPQ) == pytest.approx(1 - 1 / 32)


def test_groove_one_bar_is_nan_and_empty_is_one() -> None:
    assert math.isnan(groove_similarity(notes((0, 480, 60)), bars(BAR_44), TPQ))
    assert groove_similarity(NoteArray.empty(), bars(BAR_44, BAR_44), TPQ) == 1.0


def test_groove_ignores_pitch_and_duplicates() -> None:
    a = notes((0, 480, 60), (0, 480, 64), (BAR_44, 480, 72))
    assert groove_similarity(a, bars(BAR_44, BAR_44), TPQ) == 1.0


# ------------------------------------------------------------------------------------ pitch classes


def test_pch_entropy_known_values() -> None:
    assert pch_entropy(NoteArray.empty()) == 0.0
    assert pch_entropy(notes((0, 1, 60), (5, 1, 72))) == 0.0              # one pitch class
    assert pch_entropy(notes((0, 1, 60), (5, 1, 62))) == pytest.approx(1.0)
    assert pch_entropy(notes(*[(i, 1, 60 + i) for i in range(12)])) == pytest.approx(math.log2(12))
    # Counts onsets: C C C D -> p = (3/4, 1/4).
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert pch_entropy(notes((0, 1, 60), (1, 1, 60), (2, 1, 48), (3, 1, 62))) == pytest.approx(h)
    assert pche_diff(notes((0, 1, 60), (5, 1, 62)), notes((0, 1, 60))) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------- onset F1


def test_onset_f1_time_shift_of_a_sixteenth() -> None:
    sixteenths = notes(*[(t, 120, 60) for t in range(0, 480, 120)])      # 0, 120, 240, 360
    late = shifted(sixteenths, ticks=120)                                 # 120, 240, 360, 480
    f = onset_f1(late, sixteenths, TPQ / 8)
    assert (f.matched, f.f1) == (3, pytest.approx(0.75))
    # Distinct pitches: a 16th shift is twice the tolerance, nothing matches.
    line = notes((0, 120, 60), (120, 120, 62), (240, 120, 64), (360, 120, 65))
    assert onset_f1(shifted(line, ticks=120), line, TPQ / 8).f1 == 0.0
    # The tolerance is inclusive: a 32nd (60 ticks) still matches, 61 ticks does not.
    assert onset_f1(shifted(line, ticks=60), line, TPQ / 8).f1 == 1.0
    assert onset_f1(shifted(line, ticks=61), line, TPQ / 8).f1 == 0.0


def test_onset_f1_is_one_to_one_and_maximal() -> None:
    # Two generated notes near one original: one match.
    f = onset_f1(notes((0, 1, 60), (10, 1, 60)), notes((5, 1, 60)), 60)
    assert (f.matched, f.precision, f.recall, f.f1) == (1, 0.5, 1.0, pytest.approx(2 / 3))
    # Closest-pair-first would pair 60-55 and lose 0; the maximum matching pairs 0-55 and 60-115.
    f = onset_f1(notes((0, 1, 60), (60, 1, 60)), notes((55, 1, 60), (115, 1, 60)), 60)
    assert f.matched == 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(60, 62)), max_size=12),
       st.lists(st.tuples(st.integers(0, 40), st.integers(60, 62)), max_size=12),
       st.integers(0, 6))
def test_onset_matching_equals_brute_force_maximum(g, o, tol) -> None:
    gen = notes(*[(t, 1, p) for t, p in g])
    orig = notes(*[(t, 1, p) for t, p in o])
    f = onset_f1(gen, orig, tol)
    if g and o:
        adj = np.array([[pg == po and abs(tg - to) <= tol for to, po in o] for tg, pg in g], dtype=np.int8)
        best = int((maximum_bipartite_matching(csr_matrix(adj), perm_type="column") >= 0).sum())
        assert f.matched == best
        assert onset_f1(orig, gen, tol).f1 == pytest.approx(f.f1)       # symmetric
    assert 0.0 <= f.f1 <= 1.0


# ----------------------------------------------------------------------------------- onset-only F1


def test_onset_only_f1_ignores_pitch() -> None:
    line = notes((0, 480, 60), (480, 480, 64), (960, 480, 68), (1440, 480, 72))
    up = shifted(line, semitones=1)
    assert onset_f1(up, line, TPQ / 8).f1 == 0.0
    f = onset_only_f1(up, line, TPQ / 8)
    assert (f.matched, f.precision, f.recall, f.f1) == (4, 1.0, 1.0, 1.0)
    # The same 32nd-note tolerance, inclusive: 60 ticks late still matches, 61 does not.
    assert onset_only_f1(shifted(up, ticks=60), line, TPQ / 8).f1 == 1.0
    assert onset_only_f1(shifted(up, ticks=61), line, TPQ / 8).f1 == 0.0


def test_onset_only_f1_counts_notes_one_to_one() -> None:
    # A 3-note chord against one note at the same onset: one match (precision 1/3, recall 1, F1 1/2).
    f = onset_only_f1(notes((0, 480, 60), (0, 480, 64), (0, 480, 67)), notes((0, 480, 48)), TPQ / 8)
    assert (f.matched, f.precision, f.recall, f.f1) == (1, pytest.approx(1 / 3), 1.0, pytest.approx(0.5))
    # Eighths against quarters: the 2 quarter onsets are matched, the 2 off-beat eighths are not.
    f = onset_only_f1(notes(*[(t, 240, 62) for t in range(0, 960, 240)]), notes((0, 480, 60), (480, 480, 60)), 60)
    assert (f.matched, f.precision, f.recall) == (2, 0.5, 1.0)
    assert onset_only_f1(NoteArray.empty(), NoteArray.empty(), 60).f1 == 1.0
    assert onset_only_f1(NoteArray.empty(), MELODY, 60).f1 == 0.0
    with pytest.raises(BadRequestError, match="tolerance_ticks"):
        onset_only_f1(MELODY, MELODY, math.inf)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(60, 62)), max_size=12),
       st.lists(st.tuples(st.integers(0, 40), st.integers(60, 62)), max_size=12),
       st.integers(0, 6))
def test_onset_only_f1_is_a_maximum_matching_and_never_below_onset_f1(g, o, tol) -> None:
    gen = notes(*[(t, 1, p) for t, p in g])
    orig = notes(*[(t, 1, p) for t, p in o])
    f = onset_only_f1(gen, orig, tol)
    if g and o:
        adj = np.array([[abs(tg - to) <= tol for to, _ in o] for tg, _ in g], dtype=np.int8)
        best = int((maximum_bipartite_matching(csr_matrix(adj), perm_type="column") >= 0).sum())
        assert f.matched == best
    assert f.f1 >= onset_f1(gen, orig, tol).f1


# ------------------------------------------------------------------------------------ register and key

# C major, one bar of context before a 2-bar span: C D E F G A B C' E (9 notes, 7 classes, mean pitch 66).
C_MAJOR_CONTEXT = notes(*[(t * 200 - BAR_44, 200, p) for t, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72, 64])])


def test_register_err_known_values() -> None:
    assert mean_pitch(MELODY) == pytest.approx(np.mean([60, 64, 62, 65, 67, 69, 67, 60, 64]))
    assert register_err(shifted(MELODY, semitones=12), MELODY) == pytest.approx(12.0)
    assert register_err(shifted(MELODY, semitones=-3), MELODY) == pytest.approx(3.0)
    assert register_err(MELODY, MELODY) == 0.0
    # Only the means count: C4 + C6 has the mean of C5.
    assert register_err(notes((0, 1, 60), (0, 1, 84)), notes((0, 1, 72))) == 0.0
    assert math.isnan(register_err(NoteArray.empty(), MELODY))
    assert math.isnan(register_err(MELODY, NoteArray.empty()))
    assert math.isnan(mean_pitch(NoteArray.empty()))


def test_register_off12_is_more_than_an_octave_from_the_context() -> None:
    ctx = C_MAJOR_CONTEXT
    assert mean_pitch(ctx) == 66.0
    at = notes((0, 480, 66), (480, 480, 67))             # mean 66.5: 0.5 from the context
    assert register_off12(at, ctx) == 0.0
    assert register_off12(shifted(at, semitones=11), ctx) == 0.0          # 11.5 semitones off
    assert register_off12(shifted(at, semitones=12), ctx) == 1.0          # 12.5
    assert register_off12(shifted(at, semitones=-12), ctx) == 0.0         # 11.5
    assert register_off12(shifted(at, semitones=-13), ctx) == 1.0         # 12.5
    exact = notes((0, 1, 72), (0, 1, 84))                                 # mean 78: exactly 12, not more
    assert register_off12(exact, ctx) == 0.0
    assert math.isnan(register_off12(NoteArray.empty(), ctx)) and math.isnan(register_off12(at, NoteArray.empty()))


def test_key_pitch_classes_top_seven_with_ties_to_the_lower_class() -> None:
    assert key_pitch_classes(C_MAJOR_CONTEXT).tolist() == [0, 2, 4, 5, 7, 9, 11]
    # 8 classes used once each: the tie drops the highest class (B = 11) ...
    eight = notes(*[(i, 1, 60 + pc) for i, pc in enumerate([0, 2, 4, 5, 7, 9, 11, 1])])
    assert key_pitch_classes(eight).tolist() == [0, 1, 2, 4, 5, 7, 9]
    # ... unless it is used more: counts beat the tie-break.
    assert key_pitch_classes(NoteArray(np.append(eight.onset, 9), np.append(eight.duration, 1),
                                       np.append(eight.pitch, 83))).tolist() == [0, 1, 2, 4, 5, 7, 11]
    # Fewer than 7 classes used: only those (an unused class never enters the key).
    assert key_pitch_classes(notes((0, 1, 60), (1, 1, 64), (2, 1, 67))).tolist() == [0, 4, 7]
    assert key_pitch_classes(NoteArray.empty()).tolist() == []
    with pytest.raises(BadRequestError, match="size"):
        key_pitch_classes(MELODY, size=13)


def test_out_of_key_share_known_exactly() -> None:
    ctx = C_MAJOR_CONTEXT
    scale = notes(*[(i * 240, 240, p) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71])])
    assert out_of_key(scale, ctx) == 0.0
    assert out_of_key(shifted(scale, semitones=12), ctx) == 0.0            # an octave keeps every class
    # A semitone up (C# D# F F# G# A# C): F and C stay in C major -> 5 of 7 out.
    assert out_of_key(shifted(scale, semitones=1), ctx) == pytest.approx(5 / 7)
    # A tritone up (F# G# A# B C# D# F): B and F stay in -> 5 of 7 out.
    assert out_of_key(shifted(scale, semitones=6), ctx) == pytest.approx(5 / 7)
    # Counted by note: three F# and one C -> 3 of 4.
    assert out_of_key(notes((0, 1, 66), (1, 1, 78), (2, 1, 54), (3, 1, 60)), ctx) == 0.75
    assert math.isnan(out_of_key(NoteArray.empty(), ctx)) and math.isnan(out_of_key(scale, NoteArray.empty()))


def test_score_span_pitch_measures_use_the_context_outside_the_span() -> None:
    b = bars(BAR_44, BAR_44)
    up = shifted(MELODY, semitones=14)                    # an octave and a tone up: D major-ish
    s = score_span(up, MELODY, b, TPQ, context=C_MAJOR_CONTEXT)
    assert s["register_err"] == pytest.approx(14.0)
    assert s["onset_f1"] == 0.0 and s["onset_only_f1"] == 1.0
    # MELODY's classes C E D F G A G C E up a tone: D F# E G A B A D F# -> the two F# are out of C major.
    assert s["out_of_key"] == pytest.approx(2 / 9) and s["out_of_key_orig"] == 0.0
    # Mean pitch 578/9 + 14 = 78.2 against the context's 66: more than 12 off; the original (64.2) is not.
    assert s["register_off12"] == 1.0 and s["register_off12_orig"] == 0.0
    # Context notes with an onset inside the span are dropped: passing the span itself changes nothing.
    inside = NoteArray(np.append(C_MAJOR_CONTEXT.onset, [0, 960]), np.append(C_MAJOR_CONTEXT.duration, [1, 1]),
                       np.append(C_MAJOR_CONTEXT.pitch, [30, 31]))
    with_inside = score_span(up, MELODY, b, TPQ, context=inside)
    for k in ("register_off12", "register_off12_orig", "out_of_key", "out_of_key_orig"):
        assert with_inside[k] == s[k]
    # No context: the context measures are NaN; drums: every pitch measure is NaN, rhythm still scored.
    none = score_span(up, MELODY, b, TPQ)
    assert math.isnan(none["out_of_key"]) and math.isnan(none["register_off12"])
    assert none["register_err"] == pytest.approx(14.0)
    drums = score_span(up, MELODY, b, TPQ, is_drum=True, context=C_MAJOR_CONTEXT)
    assert all(math.isnan(drums[k]) for k in ("register_err", "register_off12", "register_off12_orig", "out_of_key",
                                              "out_of_key_orig"))
    assert drums["onset_only_f1"] == 1.0
    assert HIGHER_IS_BETTER["onset_only_f1"] and not HIGHER_IS_BETTER["register_err"]
    assert not HIGHER_IS_BETTER["register_off12"] and not HIGHER_IS_BETTER["out_of_key"]


# --------------------------------------------------------------------------------------- empty spans


def test_empty_spans_have_defined_values() -> None:
    b = bars(BAR_44, BAR_44)
    both = score_span(NoteArray.empty(), NoteArray.empty(), b, TPQ)
    assert (both["cp"], both["cp_active"], both["onset_f1"], both["pche_diff"], both["gs_gap"]) == (0, 1, 1, 0, 0)
    gen_empty = score_span(NoteArray.empty(), MELODY, b, TPQ)
    assert (gen_empty["cp"], gen_empty["cp_active"], gen_empty["onset_f1"]) == (0, 0, 0)
    assert gen_empty["onset_precision"] == gen_empty["onset_recall"] == 0
    assert gen_empty["pche_diff"] == pytest.approx(pch_entropy(MELODY))
    assert gen_empty["gs"] == 1.0
    orig_empty = score_span(MELODY, NoteArray.empty(), b, TPQ)
    assert (orig_empty["cp"], orig_empty["cp_active"], orig_empty["onset_f1"]) == (0, 0, 0)
    # Pitch measures are NaN when a side is empty (no register or key to compare) or no context is given.
    pitch_keys = {"register_err", "register_off12", "register_off12_orig", "out_of_key", "out_of_key_orig"}
    for s in (both, gen_empty, orig_empty):
        assert not any(math.isnan(v) for k, v in s.items() if not k.startswith("ctrl_") and k not in pitch_keys)
        assert math.isnan(s["register_err"]) and math.isnan(s["out_of_key"]) and math.isnan(s["register_off12"])
    assert (both["onset_only_f1"], gen_empty["onset_only_f1"], orig_empty["onset_only_f1"]) == (1, 0, 0)


def test_score_span_onset_metrics_use_only_onsets_inside_the_span() -> None:
    b = bars(BAR_44, BAR_44, start=BAR_44)                 # span = bars 2-3 of a longer piece
    inside = notes((BAR_44, 480, 60), (2 * BAR_44, 480, 62))
    with_outside = notes((0, BAR_44 + 480, 55), (BAR_44, 480, 60), (2 * BAR_44, 480, 62), (3 * BAR_44, 480, 70))
    s = score_span(with_outside, inside, b, TPQ)
    assert s["n_notes"] == 2 and s["onset_f1"] == 1.0 and s["pche_diff"] == 0.0 and s["gs_gap"] == 0.0
    # The G sustained into the span from bar 1 does sound in the first frames, so CP sees it.
    assert s["cp_active"] < 1.0


# ---------------------------------------------------------------------------------- control adherence


@dataclass
class Ctl:
    density: int | None = None
    poly_min: int | None = None
    poly_max: int | None = None
    dur_whole: bool | None = None
    dur_half: bool | None = None
    dur_quarter: bool | None = None
    dur_eighth: bool | None = None
    dur_sixteenth: bool | None = None


def test_control_adherence_per_bar_and_means() -> None:
    requested = [{"density": 4, "poly_min": 1, "poly_max": 2, "dur_quarter": 1},
                 Ctl(density=18, dur_quarter=True, dur_eighth=False)]
    measured = [Ctl(density=6, poly_min=1, poly_max=3, dur_whole=False, dur_half=False, dur_quarter=False,
                    dur_eighth=True, dur_sixteenth=False),
                {"density": 25, "poly_min": 2, "poly_max": 9, "dur_quarter": 1, "dur_eighth": 0}]
    errors = control_adherence(requested, measured)
    assert errors.per_bar[0] == {"density": 2, "poly_min": 0, "poly_max": 1, "dur_whole": None, "dur_half": None,
                                 "dur_quarter": 1, "dur_eighth": None, "dur_sixteenth": None}
    # "18+" requested, 25 measured: met.
    assert errors.per_bar[1]["density"] == 0 and errors.per_bar[1]["poly_max"] is None
    assert errors.means["density"] == 1.0
    assert errors.means["poly_max"] == 1.0
    assert errors.means["dur_quarter"] == 0.5
    assert errors.means["dur"] == pytest.approx(1 / 3)
    assert math.isnan(errors.means["dur_whole"])
    assert errors.means["all"] == pytest.approx((2 + 0 + 1 + 1 + 0 + 0 + 0) / 7)


def test_control_adherence_in_score_span_and_errors() -> None:
    b = bars(BAR_44, BAR_44)
    req = [Ctl(density=9), Ctl(density=0)]
    mea = [Ctl(density=5), Ctl(density=4)]
    s = score_span(MELODY, MELODY, b, TPQ, requested_controls=req, measured_controls=mea)
    assert s["ctrl_density_err"] == 4.0 and s["ctrl_all_err"] == 4.0 and math.isnan(s["ctrl_poly_min_err"])
    with pytest.raises(BadRequestError, match="without requested_controls"):
        score_span(MELODY, MELODY, b, TPQ, measured_controls=mea)
    with pytest.raises(BadRequestError, match="requested_controls"):
        score_span(MELODY, MELODY, b, TPQ, requested_controls=req[:1], measured_controls=mea[:1])
    with pytest.raises(BadRequestError, match="differ in length"):
        control_adherence(req, mea[:1])


def test_measure_bar_controls_and_default_measurement() -> None:
    b = bars(BAR_44, BAR_44)
    measured = measure_bar_controls(MELODY, b, TPQ)
    assert measured == [
        BarControls(poly_min=1, poly_max=2, density=5, dur_whole=False, dur_half=True, dur_quarter=True,
                    dur_eighth=True, dur_sixteenth=False),
        BarControls(poly_min=1, poly_max=2, density=4, dur_whole=False, dur_half=True, dur_quarter=True,
                    dur_eighth=False, dur_sixteenth=False),
    ]
    assert measure_bar_controls(MELODY, b, TPQ, is_drum=True) == [BarControls(density=5), BarControls(density=4)]
    # Requesting the original's own controls: every error 0 when the generation equals the original.
    s = score_span(MELODY, MELODY, b, TPQ, requested_controls=measured)
    assert all(s[f"ctrl_{n}_err"] == 0.0 for n in (*CONTROL_FIELDS, "dur", "all"))
    # Generating only the first bar: bar 2 is empty (density 0, polyphony 1, no durations).
    first = MELODY.in_span(0, BAR_44)
    s = score_span(first, MELODY, b, TPQ, requested_controls=measured)
    assert s["ctrl_density_err"] == pytest.approx((0 + 4) / 2)
    assert s["ctrl_poly_max_err"] == pytest.approx((0 + 1) / 2)
    assert set(CONTROL_FIELDS) == set(control_field_names())


# -------------------------------------------------------------------------------------- NLL and input


def test_bits_per_note() -> None:
    assert bits_per_note(10.0, 5) == pytest.approx(10 / math.log(2) / 5)
    assert bits_per_note(0.0, 3) == 0.0
    assert math.isnan(bits_per_note(3.0, 0))
    with pytest.raises(BadRequestError, match="total_nll_nats"):
        bits_per_note(-1.0, 3)
    with pytest.raises(BadRequestError, match="n_notes"):
        bits_per_note(1.0, -2)


def test_note_inputs_are_converted() -> None:
    import symusic

    structured = np.array([(0, 480, 60), (480, 240, 62)], dtype=[("onset", "i8"), ("duration", "i8"), ("pitch", "i8")])
    a = as_note_array(structured)
    b = as_note_array({"time": [0, 480], "duration": [480, 240], "pitch": [60, 62], "velocity": [80, 80]})
    c = as_note_array([symusic.Note(0, 480, 60, 80), symusic.Note(480, 240, 62, 80)])
    track = symusic.Track()
    track.notes.append(symusic.Note(0, 480, 60, 80))
    track.notes.append(symusic.Note(480, 240, 62, 80))
    d = as_note_array(track.notes.numpy())
    for x in (b, c, d):
        assert np.array_equal(x.onset, a.onset) and np.array_equal(x.duration, a.duration)
        assert np.array_equal(x.pitch, a.pitch)
    assert score_span(c, structured, bars(BAR_44), TPQ)["onset_f1"] == 1.0


def test_bad_inputs_raise_typed_errors() -> None:
    with pytest.raises(BadRequestError, match="bar_ticks"):
        content_preservation(MELODY, MELODY, [0])
    with pytest.raises(BadRequestError, match="strictly increasing"):
        groove_similarity(MELODY, [0, 1920, 1920], TPQ)
    with pytest.raises(BadRequestError, match="tpq"):
        score_span(MELODY, MELODY, bars(BAR_44), 0)
    with pytest.raises(BadRequestError, match="durations"):
        notes((0, -1, 60))
    with pytest.raises(BadRequestError, match="pitches"):
        notes((0, 1, 128))
    with pytest.raises(BadRequestError, match="differ in length"):
        NoteArray(np.array([0, 1]), np.array([1]), np.array([60]))
    with pytest.raises(BadRequestError, match="tolerance_ticks"):
        onset_f1(MELODY, MELODY, -1)
    with pytest.raises(BadRequestError, match="no note fields"):
        as_note_array(np.zeros(3))


def test_score_span_reports_what_the_tested_functions_compute_on_a_real_song() -> None:
    """score_span delegates to the functions tested above (no inline copies): on a real POP909 melody, the
    previous 4 bars pasted over bars 8-11 score exactly what each function gives on its own."""
    from pathlib import Path

    from midirwkv.music.remi import bar_grid, load_score

    score = load_score(Path(__file__).parent / "fixtures" / "corpus" / "pop909" / "001.mid")
    bar_ticks, _ = bar_grid(score)
    track = max(score.tracks, key=lambda t: len(t.notes))
    orig = as_note_array(track.notes)
    span = np.asarray(bar_ticks[8:13])
    before = orig.in_span(int(bar_ticks[4]), int(bar_ticks[8]))
    gen = shifted(before, ticks=int(span[0] - bar_ticks[4]))
    out = score_span(gen, orig, span, score.ticks_per_quarter)
    gen_in, orig_in = gen.in_span(int(span[0]), int(span[-1])), orig.in_span(int(span[0]), int(span[-1]))
    assert len(gen_in) > 10 and len(orig_in) > 10
    assert out["cp"] == content_preservation(gen, orig, span)
    assert out["cp_active"] == content_preservation_active(gen, orig, span)
    assert out["gs_gap"] == groove_gap(gen_in, orig_in, span, score.ticks_per_quarter)
    assert out["pche_diff"] == pche_diff(gen_in, orig_in)
    assert 0.0 < out["cp"] < 1.0 and 0.0 <= out["gs_gap"] < 1.0
