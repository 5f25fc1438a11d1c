"""Infill prompts, splicing and track infilling on real and synthetic files."""

from __future__ import annotations

from pathlib import Path

import pytest

from midirwkv.errors import BadRequestError
from midirwkv.music import remi
from midirwkv.music.controls import BarControls, TrackControls
from midirwkv.music.infill import (
    InfillRequest,
    TrackRequest,
    build_prompt,
    build_track_prompt,
    splice,
    splice_track,
)
from midirwkv.music.vocab import Vocab

FIXTURES = Path(__file__).parent / "fixtures"
ALL = sorted((FIXTURES / "pop909").glob("*.mid")) + sorted((FIXTURES / "bach").glob("*.mid")) + \
    [FIXTURES / "synthetic" / "meters.mid"]


@pytest.fixture(scope="module")
def vocab():
    return Vocab.load()


def load(vocab, path):
    score = remi.load_score(path)
    return score, remi.encode_score(score, vocab)


def names(vocab, ids):
    return [vocab.name(i) for i in ids]


def test_prompt_layout_real_meters_and_controls(vocab):
    _, st = load(vocab, FIXTURES / "synthetic" / "meters.mid")
    req = InfillRequest(track=0, start=4, end=8, context_bars=1)
    p = build_prompt(vocab, st, req)
    assert p.window == (3, 9)
    piano, drums = st.tracks
    expect = [vocab.track_start, vocab.id("Program_0")] + piano.bars[3] + [vocab.infill_bar] * 4 + piano.bars[8] + \
        [vocab.track_end, vocab.track_start, vocab.id("Program_-1")] + [i for bar in drums.bars[3:9] for i in bar] + [vocab.track_end]
    expect += [vocab.fillbar_start] + piano.bars[4][:2] + vocab.ids(piano.controls[4].to_tokens())
    assert p.ids == expect
    assert [names(vocab, h) for h in p.bar_headers] == [["Bar_None", "TimeSig_4/4"], ["Bar_None", "TimeSig_3/4"],
                                                        ["Bar_None", "TimeSig_3/4"], ["Bar_None", "TimeSig_6/8"]]
    assert [len(c) for c in p.bar_controls] == [8] * 4
    # drums: density only; free fields give no token
    pd = build_prompt(vocab, st, InfillRequest(track=1, start=1, end=3, context_bars=0))
    assert names(vocab, pd.bar_controls[0]) == ["ACBarNoteDensity_6"]
    free = [BarControls(density=2), BarControls()]
    pf = build_prompt(vocab, st, InfillRequest(track=0, start=5, end=7, controls=free))
    assert names(vocab, pf.bar_controls[0]) == ["ACBarNoteDensity_2"] and pf.bar_controls[1] == []
    assert pf.ids[-3:] == pf.bar_headers[0] + pf.bar_controls[0]


def test_pickup_and_span_at_the_edges(vocab):
    _, st = load(vocab, FIXTURES / "synthetic" / "meters.mid")
    p = build_prompt(vocab, st, InfillRequest(track=0, start=0, end=1, context_bars=4))
    assert p.window == (0, 5) and names(vocab, p.bar_headers[0]) == ["Bar_None", "TimeSig_1/4"]
    p = build_prompt(vocab, st, InfillRequest(track=0, start=7, end=9, context_bars=4))
    assert p.window == (3, 9)


def test_budget_shrinks_context_symmetrically_never_the_span(vocab):
    _, st = load(vocab, FIXTURES / "pop909" / "318.mid")
    start, end = 20, 24
    full = build_prompt(vocab, st, InfillRequest(track=0, start=start, end=end, context_bars=8))
    assert full.window == (12, 32)
    small = build_prompt(vocab, st, InfillRequest(track=0, start=start, end=end, context_bars=8,
                                                  max_prompt_tokens=len(full.ids) // 2))
    lo, hi = small.window
    assert len(small.ids) <= len(full.ids) // 2
    assert abs((start - lo) - (hi - end)) <= 1 and lo > 12 and hi < 32
    assert small.ids.count(vocab.infill_bar) == 4
    bare = build_prompt(vocab, st, InfillRequest(track=0, start=start, end=end, context_bars=0))
    with pytest.raises(BadRequestError, match="max_prompt_tokens") as err:
        build_prompt(vocab, st, InfillRequest(track=0, start=start, end=end, max_prompt_tokens=len(bare.ids) - 1))
    assert str(len(bare.ids)) in err.value.fix


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_splice_with_original_tokens_reproduces_the_span(vocab, path):
    score, st = load(vocab, path)
    for tt in st.tracks:
        start = min(2, st.n_bars - 1)
        end = min(start + 3, st.n_bars)
        req = InfillRequest(track=tt.index, start=start, end=end)
        new = splice(score, st, req, [tt.bars[b] for b in range(start, end)])
        t0, t1 = st.bar_ticks[start], st.bar_ticks[end]
        # file-level data untouched
        assert new.ticks_per_quarter == score.ticks_per_quarter
        assert new.tempos == score.tempos and new.time_signatures == score.time_signatures
        assert [(t.name, t.program, t.is_drum) for t in new.tracks] == [(t.name, t.program, t.is_drum)
                                                                       for t in score.tracks]
        for i, (a, b) in enumerate(zip(score.tracks, new.tracks)):
            if i != tt.index:
                assert a.notes == b.notes                       # other tracks: exactly the same notes
        q = remi.quantise_track(score.tracks[tt.index], st.bar_ticks, st.time_sigs, st.tpq, remi.tables(vocab))
        old = score.tracks[tt.index].notes.numpy()
        outside = {(int(t), int(d), int(p), int(v)) for t, d, p, v, b in
                   zip(old["time"], old["duration"], old["pitch"], old["velocity"], q.all_bar) if not start <= b < end}
        got = new.tracks[tt.index].notes.numpy()
        kept = {(int(t), int(d), int(p), int(v)) for t, d, p, v in
                zip(got["time"], got["duration"], got["pitch"], got["velocity"])}
        assert outside <= kept                                  # every note outside the span is untouched
        inside = [(t, d) for t, d, *_ in kept - outside]
        assert all(t0 <= t < t1 and t + d <= t1 for t, d in inside)     # cut at the span's end
        again = remi.encode_score(new, vocab)
        assert again.bar_ticks == st.bar_ticks
        a = again.track(tt.index)
        assert a.bars[:start] == tt.bars[:start] and a.bars[end:] == tt.bars[end:]

        def no_dur(bars):
            return [[i for i in bar if vocab.kind(i) != "Duration"] for bar in bars]
        assert no_dur(a.bars[start:end]) == no_dur(tt.bars[start:end])   # same notes; durations may be cut


def test_splice_generated_notes_silent_span_and_cut(vocab):
    score, st = load(vocab, FIXTURES / "synthetic" / "meters.mid")
    req = InfillRequest(track=0, start=3, end=4)          # the empty bar
    bar = st.tracks[0].bars[3][:2] + vocab.ids(["Position_12", "Pitch_70", "Velocity_100", "Duration_8.0.1"])
    new = splice(score, st, req, [bar])
    added = [n for n in new.tracks[0].notes if n.pitch == 70]
    assert [(n.time, n.duration, n.velocity) for n in added] == [(4320 + 480, 1920 - 480, 100)]
    silent = splice(score, st, InfillRequest(track=0, start=1, end=3), [st.tracks[0].bars[1][:2]] * 2)
    assert not [n for n in silent.tracks[0].notes if 480 <= n.time < 4320]
    assert len(score.tracks[0].notes) == 36                      # the input score is never modified


def test_track_infilling_prompt_and_splice(vocab):
    score, st = load(vocab, FIXTURES / "bach" / "bwv66_6.mid")
    alto = st.tracks[1]
    p = build_track_prompt(vocab, st, TrackRequest(track=alto.index))
    assert vocab.infill_track in p.ids and p.ids[-2:] == p.bar_headers[0]
    k = p.ids.index(vocab.infill_track)
    assert names(vocab, p.ids[k:k + 3]) == ["Infill_Track", "Track_Start", "Program_0"]
    assert all(vocab.is_control(i) for i in p.ids[k + 3:-2]) and len(p.ids[k + 3:-2]) == 11
    assert alto.bars[0] not in [p.ids[i:i + len(alto.bars[0])] for i in range(k)]
    new = splice_track(score, st, TrackRequest(track=alto.index), alto.bars)
    assert remi.encode_score(new, vocab).track(alto.index).bars[:-1] == alto.bars[:-1]
    # a new track for a given program
    pn = build_track_prompt(vocab, st, TrackRequest(program=40, controls=TrackControls(density_min=2)))
    assert names(vocab, pn.ids[-6:]) == ["Infill_Track", "Track_Start", "Program_40", "ACTrackNoteDensityMin_2",
                                         "Bar_None", "TimeSig_4/4"]
    assert vocab.id("Program_40") in pn.ids and len([t for t in pn.ids if t == vocab.track_start]) == 5
    bars = [st.tracks[0].bars[b] for b in range(st.n_bars)]
    added = splice_track(score, st, TrackRequest(program=40, name="Violin"), bars)
    assert len(added.tracks) == len(score.tracks) + 1 and added.tracks[-1].program == 40
    assert len(added.tracks[-1].notes) == len(score.tracks[0].notes)
    with pytest.raises(BadRequestError, match="program"):
        build_track_prompt(vocab, st, TrackRequest())


@pytest.mark.parametrize("kwargs, arg", [
    ({"track": 9, "start": 0, "end": 1}, "track"), ({"track": 0, "start": -1, "end": 1}, "start"),
    ({"track": 0, "start": 3, "end": 3}, "end"), ({"track": 0, "start": 0, "end": 10 ** 6}, "end"),
    ({"track": 0, "start": 0, "end": 2, "controls": [BarControls()]}, "controls"),
    ({"track": 0, "start": 0, "end": 1, "controls": [{"density": 40}]}, "density"),
    ({"track": 0, "start": 0, "end": 1, "context_bars": -2}, "context_bars"),
])
def test_bad_requests_name_the_argument(vocab, kwargs, arg):
    _, st = load(vocab, FIXTURES / "synthetic" / "meters.mid")
    with pytest.raises(BadRequestError) as err:
        build_prompt(vocab, st, InfillRequest(**kwargs))
    assert err.value.argument == arg and err.value.fix


def test_splice_wrong_bar_count(vocab):
    score, st = load(vocab, FIXTURES / "synthetic" / "meters.mid")
    with pytest.raises(BadRequestError, match="bars_base_ids"):
        splice(score, st, InfillRequest(track=0, start=1, end=3), [st.tracks[0].bars[1]])


def test_a_new_note_never_cuts_a_held_note_from_before_the_span_after_writing_midi(tmp_path):
    """Found by the server load test: POP909 318, piano, bars 3-4. A note that starts before the span and still
    sounds in it must keep its duration in the written file, even when a generated note repeats its pitch."""
    import symusic

    from midirwkv.music.infill import InfillRequest, splice
    from midirwkv.music.remi import encode_score, load_score
    from midirwkv.music.vocab import Vocab

    path = Path(__file__).parent / "fixtures" / "pop909" / "318.mid"
    score = load_score(path)
    vocab = Vocab.load()
    st = encode_score(score, vocab)
    start, end = 2, 4
    t0, t1 = st.bar_ticks[start], st.bar_ticks[end]
    held = [n for n in score.tracks[2].notes if n.time < t0 < n.time + n.duration]
    assert held, "the fixture holds a note across the span's start"
    pos = next(i for i in range(len(vocab._base_names)) if vocab._base_names[i] == "Position_6")
    pitch = vocab.id(f"Pitch_{held[0].pitch}")
    vel, dur = (next(i for i, n in enumerate(vocab._base_names) if n.startswith(k)) for k in ("Velocity_", "Duration_"))
    bars = [list(st.tracks[2].bars[b][:2]) + ([pos, pitch, vel, dur] if b == start else []) for b in range(start, end)]
    out = tmp_path / "out.mid"
    splice(score, st, InfillRequest(track=2, start=start, end=end), bars, vocab).dump_midi(str(out))
    back = symusic.Score(str(out))

    def outside(s):
        return sorted((n.time, n.duration, n.pitch, n.velocity) for n in s.tracks[2].notes if not t0 <= n.time < t1)
    assert outside(back) == outside(score)


def test_prompt_context_pitches_are_the_target_tracks_context_notes(vocab):
    _, st = load(vocab, FIXTURES / "synthetic" / "meters.mid")
    piano, drums = st.tracks
    p = build_prompt(vocab, st, InfillRequest(track=piano.index, start=4, end=8, context_bars=1))
    pitch_of = {vocab.id(f"Pitch_{k}"): k for k in range(21, 109)}
    expect = [pitch_of[i] for b in (3, 8) for i in piano.bars[b] if i in pitch_of]   # window (3, 9), no span
    assert expect and p.context_pitches == expect
    no_context = InfillRequest(track=piano.index, start=4, end=8, context_bars=0)
    assert build_prompt(vocab, st, no_context).context_pitches == []
    drum_req = InfillRequest(track=drums.index, start=4, end=8, context_bars=1)
    assert build_prompt(vocab, st, drum_req).context_pitches == []
