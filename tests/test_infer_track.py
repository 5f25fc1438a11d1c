"""Track infilling (a new track, or one regenerated whole) with the real tiny RWKV7 (random weights) and real MIDI."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from midirwkv.config import ModelConfig, SampleConfig
from midirwkv.errors import BadRequestError
from midirwkv.infer import api
from midirwkv.infer.generate import Grammar
from midirwkv.infer.session import TrackSession
from midirwkv.model.rwkv7 import RWKV7
from midirwkv.music.controls import TrackControls
from midirwkv.music.infill import TrackRequest, build_track_prompt, splice_track
from midirwkv.music.remi import DRUM_PITCH_RANGE, bar_grid, decode_bar_tokens, encode_score, load_score
from midirwkv.music.vocab import Vocab

FIXTURES = Path(__file__).parent / "fixtures"
BACH = FIXTURES / "bach" / "bwv66_6.mid"           # 4 voices, 9 bars
METERS = FIXTURES / "synthetic" / "meters.mid"     # meter changes, a drum track
FAST = SampleConfig(max_notes_per_bar=5)


@pytest.fixture(scope="module")
def vocab():
    return Vocab.load()


@pytest.fixture(scope="module")
def model(vocab):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab.size, n_layer=2, n_embd=64, head_size=32, dim_ffn=128, decay_lora=8,
                      aaa_lora=8, mv_lora=8, gate_lora=8)
    return RWKV7(cfg).eval()


@pytest.fixture(scope="module")
def engine(model, vocab):
    return api.Engine(model=model, vocab=vocab)


def notes_of(track) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in track.notes.numpy().items()}


def same_notes(a, b) -> bool:
    na, nb = notes_of(a), notes_of(b)
    return na.keys() == nb.keys() and all(np.array_equal(na[k], nb[k]) for k in na)


@pytest.mark.parametrize("path", [BACH, METERS])
def test_new_track_has_exactly_the_files_bars_with_real_meters(model, vocab, path):
    score = load_score(path)
    st = encode_score(score, vocab)
    req = TrackRequest(program=33, name="Bass")
    prompt = build_track_prompt(vocab, st, req)
    session = TrackSession(model, vocab, prompt, grammar=Grammar.build(vocab, False, model.cfg.vocab_size))
    assert session.n_bars == st.n_bars
    (out,) = session.generate(1, FAST, seed=2)
    assert len(out.bars) == st.n_bars == len(out.attempts)
    for j, bar in enumerate(out.bars):
        assert bar[:2] == list(st.tracks[0].bars[j][:2])                 # the real meter, fed by the loop
        assert vocab.bar not in bar[2:] and vocab.track_end not in bar
        notes = decode_bar_tokens([bar], st.bar_ticks[j: j + 2], st.tpq, False)
        assert all(st.bar_ticks[j] <= n.time < st.bar_ticks[j + 1] for n in notes)
    assert vocab.track_end not in out.tokens                               # the loop ended at the last bar
    new = splice_track(score, st, req, out.bars, vocab)
    assert len(new.tracks) == len(score.tracks) + 1
    added = new.tracks[-1]
    assert added.name == "Bass" and added.program == 33 and not added.is_drum and len(added.notes) > 0
    assert max(n.end for n in added.notes) <= st.bar_ticks[-1]
    for old, kept in zip(score.tracks, new.tracks):
        assert same_notes(old, kept) and old.program == kept.program and old.name == kept.name
    new_st = encode_score(new, vocab)
    assert new_st.bar_ticks == st.bar_ticks


def test_meter_changes_are_fed(model, vocab):
    st = encode_score(load_score(METERS), vocab)
    prompt = build_track_prompt(vocab, st, TrackRequest(program=0))
    assert len({tuple(h) for h in prompt.bar_headers}) > 1                 # the fixture changes meter
    (out,) = TrackSession(model, vocab, prompt).generate(1, FAST, seed=0)
    assert [b[:2] for b in out.bars] == [list(h) for h in prompt.bar_headers]


def test_regenerate_keeps_other_tracks_byte_identical(engine):
    score = load_score(BACH)
    new, report = api.add_track(score, regenerate=1, seed=4, sample=FAST, engine=engine)
    assert len(new.tracks) == len(score.tracks)
    for i, (old, kept) in enumerate(zip(score.tracks, new.tracks)):
        if i != 1:
            assert same_notes(old, kept)
    assert not same_notes(score.tracks[1], new.tracks[1])
    (span,) = report.variations[0].spans
    assert span.kind == "track" and span.track == 1 and (span.first_bar, span.last_bar) == (1, 9)
    assert len(span.bars) == 9
    # regenerating measures the original track's controls and asks for them
    assert span.track_asked.poly_min is not None and span.track_asked.density_max is not None
    assert span.track_missed == [n for n in ("poly_min", "poly_max", "density_min", "density_max", "dur_whole",
                                             "dur_half", "dur_quarter", "dur_eighth", "dur_sixteenth",
                                             "dur_thirtysecond", "repetition")
                                 if getattr(span.track_asked, n) != getattr(span.track_achieved, n)]


def test_seed_reproducible_and_variations_as_one_batch(engine, tmp_path):
    path = tmp_path / "bach.mid"
    shutil.copy(BACH, path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    a, _ = api.add_track(path, program=40, seed=7, sample=FAST, engine=engine)
    b, _ = api.add_track(path, program=40, seed=7, sample=FAST, engine=engine)
    c, _ = api.add_track(path, program=40, seed=8, sample=FAST, engine=engine)
    assert a.dumps_midi() == b.dumps_midi() != c.dumps_midi()
    _, report = api.add_track(path, program=40, seed=7, variations=3, sample=FAST, engine=engine)
    assert [v.seed for v in report.variations] == [7, 8, 9] and len(report.scores) == 3
    assert len({s.dumps_midi() for s in report.scores}) == 3
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before     # the input is never modified
    json.dumps(report.to_dict())
    assert "track controls met" in report.summary()


def test_cache_equals_fresh_session_also_for_other_controls(model, vocab):
    st = encode_score(load_score(BACH), vocab)
    grammar = Grammar.build(vocab, False, model.cfg.vocab_size)
    loose = TrackControls(density_min=1, density_max=6)
    tight = TrackControls(poly_min=1, poly_max=1, density_min=2, density_max=3)
    session = TrackSession(model, vocab, build_track_prompt(vocab, st, TrackRequest(program=24, controls=loose)),
                           grammar=grammar)
    first = session.generate(1, FAST, seed=11)[0]
    again = session.generate(1, FAST, seed=11)[0]         # the cached state was not modified
    fresh = TrackSession(model, vocab, build_track_prompt(vocab, st, TrackRequest(program=24, controls=loose)),
                         grammar=grammar).generate(1, FAST, seed=11)[0]
    assert first.tokens == again.tokens == fresh.tokens
    # other track controls from the same cache == a fresh prompt built with them
    cached = session.generate(1, FAST, seed=11, track_controls=vocab.ids(tight.to_tokens(False)))[0]
    other = TrackSession(model, vocab, build_track_prompt(vocab, st, TrackRequest(program=24, controls=tight)),
                         grammar=grammar).generate(1, FAST, seed=11)[0]
    assert cached.tokens == other.tokens
    batch = session.generate(2, FAST, seeds=[11, 12])
    assert [o.seed for o in batch] == [11, 12]
    with pytest.raises(BadRequestError, match="track_controls"):
        session.generate(1, FAST, seed=1, track_controls=[vocab.bar])


def test_drum_track(engine, vocab):
    score = load_score(BACH)
    new, report = api.add_track(score, program=-1, seed=3, sample=FAST, engine=engine, density="2-8",
                                polyphony="1-2")
    drums = new.tracks[-1]
    assert drums.is_drum and drums.name == "Drums" and len(drums.notes) > 0
    lo, hi = DRUM_PITCH_RANGE
    assert all(lo <= n.pitch <= hi for n in drums.notes)
    asked = report.variations[0].spans[0].track_asked
    assert (asked.density_min, asked.density_max) == (2, 8) and asked.poly_min is None    # drums: density only
    st = encode_score(new, vocab)
    assert st.tracks[-1].is_drum and st.tracks[-1].program == -1
    for old, kept in zip(score.tracks, new.tracks):
        assert same_notes(old, kept)


def test_track_controls_are_reported(engine):
    new, report = api.add_track(BACH, program=0, seed=5, sample=FAST, engine=engine, density="1-5",
                                durations="quarter,eighth", repetition=0)
    span = report.variations[0].spans[0]
    asked, got = span.track_asked, span.track_achieved
    assert (asked.density_min, asked.density_max, asked.repetition) == (1, 5, 0)
    assert asked.dur_quarter is True and asked.dur_whole is False and asked.poly_min is None
    assert got is not None
    # the achieved density, counted here from the written notes: onsets per bar from the first to the last
    # bar with a note, capped at 18
    added = new.tracks[span.track]
    bar_ticks, _ = bar_grid(new)
    per_bar = np.histogram([n.time for n in added.notes], bins=bar_ticks)[0]
    used = per_bar[np.flatnonzero(per_bar)[0]: np.flatnonzero(per_bar)[-1] + 1]
    assert (got.density_min, got.density_max) == (min(int(used.min()), 18), min(int(used.max()), 18))
    # a control is reported missed exactly when the count above differs from the request
    assert ("density_min" in span.track_missed) == (int(used.min()) != 1)
    assert ("density_max" in span.track_missed) == (min(int(used.max()), 18) != 5)
    assert "poly_min" not in span.track_missed and "poly_max" not in span.track_missed     # free: never missed
    d = span.to_dict()
    assert d["kind"] == "track" and d["track_controls"]["asked"]["density_min"] == 1


def test_control_retries_keep_the_closest(engine):
    sample = SampleConfig(max_notes_per_bar=5, control_retries=2)
    _, plain = api.add_track(BACH, program=0, seed=5, sample=FAST, engine=engine, density="3-3")
    _, retried = api.add_track(BACH, program=0, seed=5, sample=sample, engine=engine, density="3-3")
    assert len(retried.variations[0].spans[0].track_missed) <= len(plain.variations[0].spans[0].track_missed)


def test_bad_requests(engine):
    with pytest.raises(BadRequestError, match="program"):
        api.add_track(BACH, program=200, engine=engine)
    with pytest.raises(BadRequestError, match="either"):
        api.add_track(BACH, program=1, regenerate=0, engine=engine)
    with pytest.raises(BadRequestError, match="either"):
        api.add_track(BACH, engine=engine)
    with pytest.raises(BadRequestError, match="track"):
        api.add_track(BACH, regenerate=9, engine=engine)
    with pytest.raises(BadRequestError, match="density"):
        api.add_track(BACH, program=1, density="5-2", engine=engine)
    with pytest.raises(BadRequestError, match="note length"):
        api.add_track(BACH, program=1, durations="triplet", engine=engine)
    with pytest.raises(BadRequestError, match="token budget"):
        api.add_track(BACH, program=1, max_prompt_tokens=50, engine=engine)
