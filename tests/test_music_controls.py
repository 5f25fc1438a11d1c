"""Exact per-bar controls, checked against values counted by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import symusic

from midirwkv.errors import BadRequestError
from midirwkv.music import remi
from midirwkv.music.controls import BarControls, BarNotes, TrackControls
from midirwkv.music.vocab import Vocab

FIXTURES = Path(__file__).parent / "fixtures"
F, T = False, True


@pytest.fixture(scope="module")
def vocab():
    return Vocab.load()


def test_hand_counted_synthetic(vocab):
    st = remi.encode_score(remi.load_score(FIXTURES / "synthetic" / "meters.mid"), vocab)
    piano, drums = st.tracks
    expected = [  # poly_min poly_max density whole half quarter eighth sixteenth
        BarControls(1, 1, 1, F, F, T, F, F),      # 1/4 pickup: one quarter note
        BarControls(1, 3, 4, T, F, F, T, F),      # chord of 3 whole notes + an eighth
        BarControls(1, 4, 18, F, F, T, F, T),     # 3 quarters + 16 sixteenths = 19 notes -> "18+"
        BarControls(1, 1, 0, F, F, F, F, F),      # empty bar
        BarControls(1, 1, 1, F, T, F, F, F),      # a half note crossing into the next bar counts here only
        BarControls(1, 1, 2, F, T, T, F, F),      # 3/4: quarter + half
        BarControls(1, 1, 1, F, F, F, F, F),      # dotted quarter (pitch 10 is out of range: not counted)
        BarControls(1, 1, 6, F, F, F, T, F),      # 6/8: six eighth notes (in quarters, whatever the meter)
        BarControls(1, 1, 1, F, F, F, F, F),      # 6/8: dotted half (3 quarters)
    ]
    assert piano.controls == expected
    assert [c.density for c in drums.controls] == [0, 6, 4, 0, 0, 0, 0, 0, 0]
    assert all(c.poly_min is None and c.dur_whole is None for c in drums.controls)        # drums: density only
    assert drums.controls[1].to_tokens(is_drum=True) == ["ACBarNoteDensity_6"]


def test_hand_counted_bach_chorale(vocab):
    # bwv66.6 (music21 corpus): soprano bar 1 = eighth, eighth, quarter, quarter, quarter;
    # bar 2 = four quarters. Alto bar 1 = four quarters; bar 2 = quarter, eighth, eighth, quarter, quarter.
    st = remi.encode_score(remi.load_score(FIXTURES / "bach" / "bwv66_6.mid"), vocab)
    soprano, alto = st.tracks[0], st.tracks[1]
    assert soprano.controls[0] == BarControls(1, 1, 5, F, F, T, T, F)
    assert soprano.controls[1] == BarControls(1, 1, 4, F, F, T, F, F)
    assert alto.controls[0] == BarControls(1, 1, 4, F, F, T, F, F)
    assert alto.controls[1] == BarControls(1, 1, 5, F, F, T, T, F)


@pytest.mark.parametrize("name", ["pop909/318.mid", "bach/bwv269.mid"])
def test_first_requested_bar_ignores_earlier_notes(vocab, name):
    # MidiTok 3.0.5 counted every earlier note in the first requested bar; ours depend on the bar only
    score = remi.load_score(FIXTURES / name)
    st = remi.encode_score(score, vocab)
    k = st.n_bars // 2
    cut = score.copy()
    for t in cut.tracks:
        keep = [n for n in t.notes if n.time >= st.bar_ticks[k] - st.tpq // 24]
        t.notes = symusic.Note.from_numpy(
            time=np.array([n.time for n in keep], dtype="int32"),
            duration=np.array([n.duration for n in keep], dtype="int32"),
            pitch=np.array([n.pitch for n in keep], dtype="int8"),
            velocity=np.array([n.velocity for n in keep], dtype="int8"))
    st_cut = remi.encode_score(cut, vocab)
    assert st_cut.bar_ticks == st.bar_ticks
    for a, b in zip(st.tracks, st_cut.tracks):
        assert a.controls[k:] == b.controls[k:]


def test_controls_tokens_and_free_fields():
    c = BarControls(2, 3, 18, T, F, T, F, T)
    assert c.to_tokens() == ["ACBarOnsetPolyphonyMin_2", "ACBarOnsetPolyphonyMax_3", "ACBarNoteDensity_18+",
                             "ACBarNoteDurationWhole_1", "ACBarNoteDurationHalf_0", "ACBarNoteDurationQuarter_1",
                             "ACBarNoteDurationEight_0", "ACBarNoteDurationSixteenth_1"]
    assert BarControls.from_tokens(c.to_tokens()) == c
    assert c.with_free("poly_min", "dur_half").to_tokens()[:2] == ["ACBarOnsetPolyphonyMax_3", "ACBarNoteDensity_18+"]
    assert BarControls(density=3).to_tokens() == ["ACBarNoteDensity_3"]
    assert BarControls(dur_half=1).dur_half is True


@pytest.mark.parametrize("kwargs, arg", [({"poly_min": 0}, "poly_min"), ({"poly_max": 7}, "poly_max"),
                                         ({"density": 19}, "density"), ({"density": -1}, "density"),
                                         ({"dur_whole": 2}, "dur_whole"), ({"poly_min": 4, "poly_max": 2}, "poly_min")])
def test_controls_out_of_range(kwargs, arg):
    with pytest.raises(BadRequestError) as err:
        BarControls(**kwargs)
    assert err.value.argument == arg and err.value.fix


def test_track_controls(vocab):
    bars = [BarNotes((0, 0, 12), (48, 48, 24)), BarNotes((), ()), BarNotes((0, 0, 12), (48, 48, 24)),
            BarNotes((6,), (6,))]
    pitches = [[60, 64, 67], [], [60, 64, 67], [70]]
    tc = TrackControls.compute(bars, pitches)
    assert (tc.poly_min, tc.poly_max, tc.density_min, tc.density_max) == (1, 2, 0, 3)
    assert (tc.dur_quarter, tc.dur_eighth, tc.dur_whole, tc.dur_thirtysecond) == (T, T, F, T)
    assert tc.repetition == round(1 / 3 * 9)
    assert all(vocab.has(name) for name in tc.to_tokens())
    assert TrackControls.compute(bars, pitches, is_drum=True).to_tokens(is_drum=True) == [
        "ACTrackNoteDensityMin_0", "ACTrackNoteDensityMax_3"]
    with pytest.raises(BadRequestError):
        TrackControls(repetition=10)
