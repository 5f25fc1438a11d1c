"""The Python API at the edges: spans up to the last bar, emptied tracks, held notes, and unchecked values."""

from __future__ import annotations

from pathlib import Path

import pytest
import symusic

from midirwkv.config import SampleConfig
from midirwkv.errors import BadRequestError
from midirwkv.infer import api
from midirwkv.music.remi import encode_score, load_score

POP001 = Path(api.__file__).resolve().parent.parent / "assets" / "examples" / "pop909_001.mid"
FAST = SampleConfig(max_notes_per_bar=4)


def eight_bars(tracks: int = 1, last_track_bars: int = 8) -> symusic.Score:
    """``tracks`` piano tracks of one quarter note per 4/4 bar; the last one spans ``last_track_bars`` bars."""
    score = symusic.Score(480)
    for k in range(tracks):
        track = symusic.Track(f"t{k}", 0, False)
        bars = last_track_bars if k == tracks - 1 else 2
        for b in range(bars):
            track.notes.append(symusic.Note(b * 1920, 480, 60 + 7 * k, 90))
        score.tracks.append(track)
    return score


def held_note() -> symusic.Score:
    """One note that lasts 8 bars."""
    score = symusic.Score(480)
    track = symusic.Track("held", 0, False)
    track.notes.append(symusic.Note(0, 8 * 1920, 60, 90))
    score.tracks.append(track)
    return score


def bars_of(report) -> list[list[int]]:
    return [[b.bar for b in sp.bars] for sp in report.variations[0].spans]


def test_the_last_bars_emptied_keep_the_original_grid(engine):
    score, report = api.infill(eight_bars(), track=0, bars="7-8", density=0, context=2, seed=1, sample=FAST,
                               engine=engine)
    assert bars_of(report) == [[7, 8]]
    for b in report.variations[0].spans[0].bars:
        assert b.achieved.density == 0 and "density" not in b.missed
    assert encode_score(score, engine.vocab).n_bars == 6        # the written file has lost its empty last bars


def test_an_empty_result_reports_empty_bars(engine):
    score, report = api.infill(eight_bars(), track=0, bars="1-8", density=0, context=2, seed=1, sample=FAST,
                               engine=engine)
    assert not any(len(t.notes) for t in score.tracks)
    (span,) = report.variations[0].spans
    assert [b.bar for b in span.bars] == list(range(1, 9))
    assert all(b.achieved.density == 0 and "density" not in b.missed for b in span.bars)


def test_a_held_note_regenerated(engine):
    _, report = api.infill(held_note(), track=0, bars="1-4", context=2, seed=2, sample=FAST, engine=engine,
                           variations=2)
    assert [[b.bar for b in v.spans[0].bars] for v in report.variations] == [[1, 2, 3, 4]] * 2


def test_pop909_last_bars_with_control_retries_and_later_spans(engine):
    st = encode_score(load_score(POP001), engine.vocab)
    assert st.n_bars == 146
    sample = SampleConfig(max_notes_per_bar=4, control_retries=1)
    spans = [api.Span(track=2, bars="143-146"), api.Span(track=1, bars="146")]
    _, report = api.infill(POP001, spans=spans, density=0, context=2, seed=3, sample=sample, engine=engine)
    assert bars_of(report) == [[143, 144, 145, 146], [146]]
    _, report = api.infill(eight_bars(), spans=[api.Span(0, "7-8"), api.Span(0, "5-6")], density=0, context=2,
                           seed=3, sample=sample, engine=engine)
    assert bars_of(report) == [[7, 8], [5, 6]]


def test_add_track_report_covers_every_bar_of_the_original(engine):
    score = eight_bars(tracks=2)            # track 1 holds the last notes of the file
    n_bars = encode_score(score, engine.vocab).n_bars
    _, report = api.add_track(score, regenerate=1, density="1", seed=4, sample=FAST, engine=engine)
    (span,) = report.variations[0].spans
    assert len(span.bars) == n_bars == 8


def test_add_track_refuses_to_empty_the_only_track(engine):
    with pytest.raises(BadRequestError, match="density") as exc:
        api.add_track(eight_bars(), regenerate=0, density=0, seed=1, sample=FAST, engine=engine)
    assert exc.value.fix
    # with another track left, asking for an empty track is allowed
    _, report = api.add_track(eight_bars(tracks=2), regenerate=0, density=0, seed=1, sample=FAST, engine=engine)
    assert len(report.variations[0].spans[0].bars) == 8


@pytest.mark.parametrize("kwargs,argument", [
    ({"source": None}, "source"),
    ({"source": 5}, "source"),
    ({"spans": [(0, "5-8")], "track": None, "bars": None}, "spans"),
    ({"spans": [], "track": None, "bars": None}, "spans"),
    ({"spans": "0:5-8", "track": None, "bars": None}, "spans"),
    ({"spans": [api.Span(0, "1-2")]}, "spans"),
    ({"seed": "abc"}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"seed": 10**25}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"seed": -1}, "seed"),
    ({"seed": True}, "seed"),
    ({"variations": True}, "variations"),
    ({"variations": 0}, "variations"),
    ({"track": "2"}, "track"),
    ({"track": 1.0}, "track"),
    ({"context": True}, "context"),
])
def test_unchecked_values_get_typed_errors(engine, kwargs, argument):
    call = {"source": eight_bars(), "track": 0, "bars": "1-2", "engine": engine, "sample": FAST} | kwargs
    with pytest.raises(BadRequestError) as exc:
        api.infill(call.pop("source"), **call)
    assert exc.value.argument == argument and exc.value.fix and "\n" not in str(exc.value)


def test_track_and_seed_checks_of_add_track(engine):
    for kwargs, argument in (({"seed": "abc"}, "seed"), ({"seed": 2**64}, "seed"), ({"regenerate": "0"}, "regenerate"),
                             ({"variations": True}, "variations")):
        call = {"regenerate": 0, "seed": 1} | kwargs
        with pytest.raises(BadRequestError) as exc:
            api.add_track(eight_bars(), engine=engine, sample=FAST, **call)
        assert exc.value.argument == argument
    with pytest.raises(BadRequestError) as exc:
        api.add_track(None, program=0, engine=engine, sample=FAST)
    assert exc.value.argument == "source"


def test_memoryview_numpy_and_large_seeds_are_accepted(engine):
    import numpy as np

    data = memoryview(eight_bars().dumps_midi())
    _, report = api.infill(data, track=np.int64(0), bars="1-2", seed=2**63 - 2, variations=2, context=1,
                           sample=FAST, engine=engine)
    assert [v.seed for v in report.variations] == [2**63 - 2, 2**63 - 1]
