"""describe(): tracks, bars, meters, tempi and per-bar controls of a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from midirwkv.errors import BadMidiError
from midirwkv.music.inspect import describe, format_description

FIXTURES = Path(__file__).parent / "fixtures"


def test_describe_synthetic():
    info = describe(FIXTURES / "synthetic" / "meters.mid")
    assert info.n_bars == 9 and info.tpq == 480
    assert [(t.index, t.name, t.program, t.is_drum, t.n_notes) for t in info.tracks] == [
        (0, "Piano", 0, False, 35), (1, "Drums", -1, True, 10)]
    assert info.time_sigs == ["1/4", "4/4", "4/4", "4/4", "4/4", "3/4", "3/4", "6/8", "6/8"]
    assert info.tempos[:5] == [120.0, 120.0, 120.0, 120.0, 90.0]
    assert info.controls[0][2]["density"] == 18 and info.controls[1][1] == {
        "poly_min": None, "poly_max": None, "density": 6, "dur_whole": None, "dur_half": None,
        "dur_quarter": None, "dur_eighth": None, "dur_sixteenth": None}
    text = format_description(info)
    assert "6/8" in text and "Drums (drums)" in text and "d18 p1-4 qs" in text
    json.dumps(info.to_dict())


def test_describe_pop909_and_bad_bytes():
    info = describe(str(FIXTURES / "pop909" / "318.mid"))
    assert len(info.tracks) == 3 and info.n_bars == len(info.time_sigs) == len(info.tempos)
    assert "more bars" in format_description(info, max_bars=4)
    with pytest.raises(BadMidiError):
        describe(b"MThd garbage")
