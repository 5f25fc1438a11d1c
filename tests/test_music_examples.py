"""Training samples: seeded, windowed, masked; property tests over real files (hypothesis)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st_

from midirwkv.music import examples, remi
from midirwkv.music.vocab import Vocab

FIXTURES = Path(__file__).parent / "fixtures"
FILES = sorted((FIXTURES / "pop909").glob("*.mid")) + sorted((FIXTURES / "bach").glob("*.mid")) + \
    [FIXTURES / "synthetic" / "meters.mid"]
VOCAB = Vocab.load()
SCORES = {p.name: remi.encode_score(remi.load_score(p), VOCAB) for p in FILES}


def split_bars(vocab, base_ids):
    bars, cur = [], None
    for i in base_ids:
        if i == vocab.bar:
            cur = [i]
            bars.append(cur)
        elif cur is not None:
            cur.append(i)
    return bars


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st_.sampled_from(sorted(SCORES)), seed=st_.integers(0, 2 ** 31), ctx=st_.sampled_from([256, 1024, 2048]))
def test_sample_properties(name, seed, ctx):
    st = SCORES[name]
    s = examples.build_sample(st, VOCAB, np.random.default_rng(seed), ctx_len=ctx)
    assert len(s.ids) <= ctx and len(s.ids) == len(s.loss_mask) == len(s.target_mask)
    assert s.ids.dtype == np.int64 and s.loss_mask.dtype == bool
    given_ids = {VOCAB.infill_bar, VOCAB.infill_track, VOCAB.fillbar_start, VOCAB.pad}
    for i, m in zip(s.ids.tolist(), s.loss_mask.tolist()):
        assert m == (i not in given_ids and not VOCAB.is_control(i))
    aug = examples.augment(type(st)(tracks=[t for t in st.tracks if t.index in s.tracks], bar_ticks=st.bar_ticks,
                                    time_sigs=st.time_sigs, tpq=st.tpq), VOCAB, s.pitch_shift, s.velocity_shift)
    tt = aug.track(s.track)
    body = [i for i in VOCAB.unbpe(s.ids[s.target_slice].tolist()) if not VOCAB.is_control(i)]
    if s.kind == "bar":
        assert s.ids[s.target_slice][0] == VOCAB.bar and s.ids[s.target_slice.start - 1] == VOCAB.fillbar_start
        if s.ids[-1] == VOCAB.fillbar_end:                       # not truncated
            assert split_bars(VOCAB, body[:-1]) == tt.bars[s.span[0]:s.span[1]]
        assert s.ids.tolist().count(VOCAB.infill_bar) == s.span[1] - s.span[0]
        assert s.window[0] <= s.span[0] < s.span[1] <= s.window[1]
    else:
        assert VOCAB.infill_track in s.ids.tolist()
        if s.ids[-1] == VOCAB.track_end:
            assert split_bars(VOCAB, body[:-1]) == tt.bars[s.window[0]:s.window[1]]


def test_deterministic_and_both_kinds():
    st = SCORES["318.mid"]
    a = examples.build_sample(st, VOCAB, np.random.default_rng(7))
    b = examples.build_sample(st, VOCAB, np.random.default_rng(7))
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.loss_mask, b.loss_mask) and a.span == b.span
    kinds = [examples.build_sample(st, VOCAB, np.random.default_rng(s)).kind for s in range(60)]
    assert 0.1 < kinds.count("track") / 60 < 0.45
    one = type(st)(tracks=st.tracks[:1], bar_ticks=st.bar_ticks, time_sigs=st.time_sigs, tpq=st.tpq)
    assert {examples.build_sample(one, VOCAB, np.random.default_rng(s)).kind for s in range(20)} == {"bar"}


def test_pitch_shift_stays_in_range_and_drums_never_shift():
    st = SCORES["meters.mid"]
    shifted = examples.augment(st, VOCAB, 5, 0)
    tb = remi.tables(VOCAB)
    pitch_of = {i: p for p, i in tb.pitch_id.items()}
    orig = [pitch_of[i] for b in st.tracks[0].bars for i in b if i in pitch_of]
    new = [pitch_of[i] for b in shifted.tracks[0].bars for i in b if i in pitch_of]
    assert new == [p + 5 for p in orig]
    assert shifted.tracks[1].bars == st.tracks[1].bars
    assert examples.augment(st, VOCAB, 0, 0).tracks[0].bars == st.tracks[0].bars
    high = examples.augment(st, VOCAB, 6, 0)
    assert max(pitch_of[i] for b in high.tracks[0].bars for i in b if i in pitch_of) <= 108


def test_dataset_builder_signature():
    pytest.importorskip("torch")
    from midirwkv.data.dataset import collate
    samples = [examples.build_sample(SCORES["bwv269.mid"], VOCAB, np.random.default_rng(s), ctx_len=512)
               for s in range(3)]
    batch = collate(samples, VOCAB.pad)
    assert batch.input_ids.shape[0] == 3
