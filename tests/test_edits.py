"""Edits at several places (infer.edits): the plans, the kept bars of a joint fill, the API and the CLI option."""

from __future__ import annotations

import numpy as np
import pytest
from model_helpers import POP909_SONG

from midirwkv import cli
from midirwkv.config import SampleConfig
from midirwkv.errors import BadRequestError
from midirwkv.infer import api
from midirwkv.infer.edits import DEFAULT_STRATEGY, STRATEGIES, Hole, check_strategy, plan_groups
from midirwkv.infer.generate import check_forced
from midirwkv.infer.pipeline import open_span
from midirwkv.music.infill import InfillRequest
from midirwkv.music.remi import encode_score, load_score

FAST = SampleConfig(max_notes_per_bar=6, candidates=2)


def _notes(score, track: int, t0: int, t1: int) -> np.ndarray:
    arr = score.tracks[track].notes.numpy()
    inside = (arr["time"] >= t0) & (arr["time"] < t1)
    return np.stack([arr[k][inside] for k in ("time", "duration", "pitch", "velocity")])


def test_plans_of_the_three_strategies():
    holes = [Hole(0, 1, 2), Hole(1, 1, 2), Hole(0, 4, 5), Hole(0, 7, 9)]
    seq = plan_groups(holes, "sequential")
    assert [(g.track, g.start, g.end) for g in seq] == [(0, 1, 2), (1, 1, 2), (0, 4, 5), (0, 7, 9)]
    rev = plan_groups(holes, "reverse")
    assert [(g.track, g.start, g.end) for g in rev] == [(0, 7, 9), (0, 4, 5), (1, 1, 2), (0, 1, 2)]
    joint = plan_groups(holes, "joint")
    assert [(g.track, g.start, g.end) for g in joint] == [(0, 1, 9), (1, 1, 2)]
    assert joint[0].filled() == [True, False, False, True, False, False, True, True]
    assert joint[0].runs() == [(1, 2), (4, 5), (7, 9)]
    assert joint[1].runs() == [(1, 2)]
    assert DEFAULT_STRATEGY in STRATEGIES
    with pytest.raises(BadRequestError) as err:
        check_strategy("parallel")
    assert err.value.argument == "strategy" and "joint" in err.value.fix


def test_forced_entries_are_checked():
    assert check_forced(None, 3) == [None, None, None]
    with pytest.raises(BadRequestError, match="one entry per span bar"):
        check_forced([None, None], 3)
    with pytest.raises(BadRequestError, match="first and the last bar"):
        check_forced([[5], None, None], 3)
    with pytest.raises(BadRequestError, match="first and the last bar"):
        check_forced([None, None, [5]], 3)


def test_joint_fill_reads_the_kept_bars_and_returns_them_unchanged(engine):
    """A joint group's kept bars are teacher-forced: their ids are fed, never sampled, and come back as they were."""
    vocab = engine.vocab
    st = encode_score(load_score(POP909_SONG), vocab)
    holes = [Hole(2, 8, 9, (st.track(2).controls[8],)), Hole(2, 11, 12, (st.track(2).controls[11],))]
    (group,) = plan_groups(holes, "joint")
    tt = st.track(2)
    forced = group.forced(vocab, tt)
    assert forced[0] is None and forced[-1] is None and all(f is not None for f in forced[1:-1])
    req = InfillRequest(track=2, start=group.start, end=group.end, controls=group.controls(tt), context_bars=2)
    outs = open_span(engine, st, req).generate(2, FAST, 3, forced=forced)
    for out in outs:
        assert len(out.bars) == 4 and out.attempts[1:3] == [0, 0]
        for j in (1, 2):
            assert out.bars[j] == list(tt.bars[group.start + j])          # the original bar, header and notes
            assert all(t in out.tokens for t in forced[j])
        assert out.bars[0][:2] == list(tt.bars[8][:2]) and out.bars[3][:2] == list(tt.bars[11][:2])


def test_api_joint_rewrites_only_the_holes(engine, song):
    spans = [api.Span(track=2, bars="9-9"), api.Span(track=2, bars="12-12"), api.Span(track=0, bars="13-14")]
    source = load_score(song)
    st = encode_score(source, engine.vocab)
    score, report = api.infill(song, spans=spans, context=2, seed=5, sample=FAST, engine=engine, strategy="joint")
    reported = [(s.track, s.first_bar, s.last_bar) for s in report.variations[0].spans]
    assert reported == [(2, 9, 9), (2, 12, 12), (0, 13, 14)]
    first, later = report.variations[0].spans[:2]
    assert later.sampled_tokens == 0 and first.sampled_tokens > 0      # counted on the joint fill's first hole
    assert later.joint_with == "9-9" and later.to_dict()["joint_with"] == "9-9" and first.joint_with is None
    assert "bars 12-12: filled with bars 9-9 (tokens counted there)" in report.summary()
    assert "bars 12-12: 0 tokens" not in report.summary()
    # the kept bars 10-11 of track 2 keep every note exactly (ticks, durations, velocities): never re-quantised
    t0, t1 = st.bar_ticks[9], st.bar_ticks[11]
    assert np.array_equal(_notes(source, 2, t0, t1), _notes(score, 2, t0, t1))
    # another track and the bars outside the spans are untouched too
    assert np.array_equal(_notes(source, 1, 0, st.bar_ticks[-1]), _notes(score, 1, 0, st.bar_ticks[-1]))


def test_api_reverse_fills_the_last_span_first(engine, song):
    spans = [api.Span(track=0, bars="5-5"), api.Span(track=0, bars="9-9")]
    _, report = api.infill(song, spans=spans, context=2, seed=2, sample=FAST, engine=engine, strategy="reverse")
    assert [s.first_bar for s in report.variations[0].spans] == [9, 5]
    with pytest.raises(BadRequestError) as err:
        api.infill(song, spans=spans, engine=engine, strategy="both")
    assert err.value.argument == "strategy"


def test_cli_strategy_option(engine, song, capsys, monkeypatch):
    monkeypatch.setattr(api, "load_engine", lambda *a, **k: engine)
    out = song.parent / "joint.mid"
    code = cli.main(["infill", str(song), "--span", "2:9-9", "--span", "2:12-12", "--strategy", "joint",
                     "--context", "2", "--seed", "1", "--candidates", "1", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert out.is_file() and "2 holes, the bars between them kept" in err
    with pytest.raises(SystemExit) as bad:
        cli.main(["infill", str(song), "--span", "2:9-9", "--strategy", "parallel", "-o", str(out)])
    assert bad.value.code == 2
    assert "--strategy" in capsys.readouterr().err
