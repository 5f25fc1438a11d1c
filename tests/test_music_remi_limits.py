"""Size limits of the music layer: tiny crafted files that ask for millions of bars are refused before encoding."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import symusic

from midirwkv.data.corpora import REASONS, prepare_corpus
from midirwkv.errors import BadMidiError, BadRequestError, LimitError
from midirwkv.music.inspect import describe
from midirwkv.music.remi import (
    ScoreLimits,
    bar_grid,
    check_limits,
    count_grid_bars,
    encode_score,
    load_score,
)
from midirwkv.music.vocab import Vocab

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def vocab():
    return Vocab.load()


@pytest.fixture(autouse=True)
def no_limit_env(monkeypatch):
    for var in ScoreLimits.ENV.values():
        monkeypatch.delenv(var, raising=False)


def score_of(tpq: int, tracks: list[list[tuple[int, int]]]) -> symusic.Score:
    """A score whose track k holds notes (time, duration) of ``tracks[k]`` (pitch 60 + k)."""
    score = symusic.Score(tpq)
    for k, notes in enumerate(tracks):
        track = symusic.Track(f"t{k}", 0, False)
        for t, d in notes:
            track.notes.append(symusic.Note(t, d, 60 + k % 40, 90))
        score.tracks.append(track)
    return score


def bomb_bytes() -> bytes:
    """The issue's memory bomb: 1 tick per quarter and a second note at tick 2**28 (67 million bars)."""
    return score_of(1, [[(0, 1), (2**28, 1)]]).dumps_midi()


def test_bomb_is_refused_quickly_before_encoding(vocab):
    data = bomb_bytes()
    assert len(data) < 100
    score = load_score(data)           # parsing two notes is cheap; the bars are the bomb
    t0 = time.perf_counter()
    with pytest.raises(LimitError) as exc:
        encode_score(score, vocab)
    assert time.perf_counter() - t0 < 2.0
    text = str(exc.value)
    assert "67,108,865 bars" in text and "4,096" in text and "max_bars" in text and "MIDIRWKV_MAX_BARS" in text
    assert isinstance(exc.value, BadMidiError) and exc.value.http_status == 413
    with pytest.raises(LimitError, match="max_bars"):
        describe(data, vocab)            # `midirwkv inspect` and the server's upload check


def test_each_limit_names_itself_and_can_be_raised(vocab, monkeypatch):
    long = score_of(1, [[(0, 1), (4 * 4999, 1)]])             # 5,000 bars of 4/4
    with pytest.raises(LimitError, match="max_bars"):
        encode_score(long, vocab)
    assert encode_score(long, vocab, limits=ScoreLimits(max_bars=5000)).n_bars == 5000
    monkeypatch.setenv("MIDIRWKV_MAX_BARS", "5000")
    assert encode_score(long, vocab).n_bars == 5000
    monkeypatch.delenv("MIDIRWKV_MAX_BARS")

    many = score_of(480, [[(i * 120, 100) for i in range(11)]])
    with pytest.raises(LimitError, match="max_notes"):
        check_limits(many, ScoreLimits(max_notes=10))
    monkeypatch.setenv("MIDIRWKV_MAX_NOTES", "10")
    with pytest.raises(LimitError, match="MIDIRWKV_MAX_NOTES=11"):
        encode_score(many, vocab)
    monkeypatch.delenv("MIDIRWKV_MAX_NOTES")

    wide = score_of(480, [[(0, 480)] for _ in range(257)])
    with pytest.raises(LimitError, match="257 tracks with notes.*max_tracks"):
        encode_score(wide, vocab)
    assert len(encode_score(wide, vocab, limits=ScoreLimits(max_tracks=257)).tracks) == 257

    held = score_of(32767, [[(0, 2**30 + 1)]])                 # one note, 8,192 bars long
    with pytest.raises(LimitError, match="max_tick"):
        encode_score(held, vocab)
    overflow = score_of(480, [[(2**31 - 10, 2**31 - 1)]])     # time + duration overflows 32 bits
    with pytest.raises(LimitError, match="max_tick"):
        encode_score(overflow, vocab)


def test_bad_limit_values_are_typed_errors(vocab, monkeypatch):
    with pytest.raises(BadRequestError, match="max_bars"):
        ScoreLimits(max_bars=0)
    with pytest.raises(BadRequestError, match="max_notes"):
        ScoreLimits(max_notes="many")
    monkeypatch.setenv("MIDIRWKV_MAX_TRACKS", "lots")
    with pytest.raises(BadRequestError, match="MIDIRWKV_MAX_TRACKS"):
        encode_score(score_of(480, [[(0, 480)]]), vocab)
    monkeypatch.setenv("MIDIRWKV_MAX_TRACKS", "1_000")
    assert ScoreLimits.from_env().max_tracks == 1000


@pytest.mark.parametrize("meter", [None, (4, 4), (3, 4), (6, 8)])
def test_count_grid_bars_equals_the_grid(meter):
    files = [*sorted((FIXTURES / "corpus" / "pop909").glob("*.mid"))[:4], *sorted((FIXTURES / "bach").glob("*.mid")),
             FIXTURES / "synthetic" / "meters.mid"]
    for path in files:
        score = load_score(path)
        assert count_grid_bars(score, meter) == len(bar_grid(score, meter)[0]) - 1, path
    cut = score_of(480, [[(0, 480), (5000, 480)]])
    cut.time_signatures.append(symusic.TimeSignature(2000, 3, 4))   # a change in the middle of bar 2
    assert count_grid_bars(cut) == len(bar_grid(cut)[0]) - 1 == 5     # 4/4, the cut bar, three of 3/4


def test_encode_on_a_given_grid_keeps_the_bars(vocab):
    full = score_of(480, [[(b * 1920, 480) for b in range(8)]])
    st = encode_score(full, vocab)
    short = score_of(480, [[(b * 1920, 480) for b in range(6)]])
    assert encode_score(short, vocab).n_bars == 6
    kept = encode_score(short, vocab, grid=(st.bar_ticks, st.time_sigs))
    assert kept.bar_ticks == st.bar_ticks and len(kept.tracks[0].controls) == 8
    assert kept.tracks[0].controls[7].density == 0 and kept.tracks[0].bars[:6] == st.tracks[0].bars[:6]
    with pytest.raises(BadRequestError, match="grid"):
        encode_score(short, vocab, grid=(st.bar_ticks, st.time_sigs[:-1]))


def test_prepare_skips_too_large_files_with_a_counted_reason(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "bomb.mid").write_bytes(bomb_bytes())
    (src / "fine.mid").write_bytes((FIXTURES / "corpus" / "pop909" / "001.mid").read_bytes())
    report = prepare_corpus([src], tmp_path / "out", workers=1, progress=False, min_bars=1, min_notes=1)
    assert "too_large" in REASONS
    assert report.dropped == {"too_large": 1} and report.n_kept == 1
    (example,) = report.extra["drop_examples"]["too_large"]
    assert example["name"].endswith("bomb.mid") and "MIDIRWKV_MAX_BARS" in example["detail"]
