"""infer/stream.py: bars streamed as they are sampled, and the live loop's variations from one cached state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from midirwkv.config import SampleConfig
from midirwkv.errors import BadRequestError
from midirwkv.infer import api
from midirwkv.infer.stream import BarEvent, LoopSession, LoopVariation, stream_infill
from midirwkv.music.controls import BarControls

SONG = Path(__file__).parent / "fixtures" / "pop909" / "318.mid"
FAST = SampleConfig(max_notes_per_bar=6, candidates=1)     # streams sample one fill per variation


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return api.load_engine(tiny_model_dir, threads=1)


class Counting(torch.nn.Module):
    """The model with a count of decoding steps (to see when a bar is handed out)."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.cfg = model.cfg
        self.steps = 0

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)

    def step(self, idx, state):
        self.steps += 1
        return self.inner.step(idx, state)

    def init_state(self, batch: int):
        return self.inner.init_state(batch)


def test_streamed_bars_are_the_bars_infill_writes(engine):
    events = list(stream_infill(SONG, 0, "5-8", context=2, seed=7, sample=FAST, engine=engine))
    assert all(isinstance(e, BarEvent) for e in events)
    assert [(e.variation, e.index, e.bar, e.last, e.seed) for e in events] == \
        [(1, 0, 5, False, 7), (1, 1, 6, False, 7), (1, 2, 7, False, 7), (1, 3, 8, True, 7)]
    assert [e.seconds for e in events] == sorted(e.seconds for e in events)
    score, report = api.infill(SONG, track=0, bars="5-8", context=2, seed=7, sample=FAST, engine=engine)
    loop = LoopSession(SONG, 0, "5-8", context=2, seed=7, sample=FAST, engine=engine)
    var = loop.next_variation()
    assert var.bars == [e.base_ids for e in events]
    assert var.score.dumps_midi() == score.dumps_midi() == var.midi
    assert var.sampled == report.variations[0].spans[0].sampled_tokens
    t0, t1 = loop.span_ticks
    streamed = sorted(n for e in events for n in e.notes)
    assert all(t0 <= n[0] < t1 and n[0] + n[1] <= t1 for n in streamed)
    assert len(streamed) == len(var.notes) and {n[:1] + n[2:] for n in streamed} == {n[:1] + n[2:] for n in var.notes}


def test_a_batch_of_variations_streams_each_with_its_seed(engine):
    events = list(stream_infill(SONG, 0, (5, 6), context=2, variations=3, seed=20, sample=FAST, engine=engine))
    _, report = api.infill(SONG, track=0, bars="5-6", context=2, variations=3, seed=20, sample=FAST, engine=engine)
    for k, var in enumerate(report.variations):
        mine = [e for e in events if e.variation == k + 1]
        assert [e.index for e in mine] == [0, 1] and {e.seed for e in mine} == {var.seed}
    assert len(events) == 6


def test_each_bar_is_handed_out_before_the_next_is_sampled(engine):
    counting = Counting(engine.model)
    wrapped = api.Engine(model=counting, vocab=engine.vocab, meta=engine.meta)
    seen = [counting.steps for _ in stream_infill(SONG, 0, "5-8", context=2, seed=3, sample=FAST, engine=wrapped)]
    assert len(seen) == 4 and seen == sorted(seen) and len(set(seen)) == 4
    assert seen[0] < seen[-1] <= counting.steps                      # the first bar came out long before the end


def test_a_loop_reuses_its_cached_state_and_moves_the_seed_on(engine):
    loop = LoopSession(SONG, 0, "5-8", context=2, seed=100, sample=FAST, engine=engine)
    before = loop.session.state.clone()
    vars_ = list(loop.variations(3))
    assert [v.number for v in vars_] == [1, 2, 3] and [v.seed for v in vars_] == [100, 101, 102]
    assert all(isinstance(v, LoopVariation) for v in vars_) and loop.passes == 3
    for a, b in zip((before.att_x, before.ffn_x, before.wkv),
                    (loop.session.state.att_x, loop.session.state.ffn_x, loop.session.state.wkv)):
        assert torch.equal(a, b)                                       # the cached prompt state is never changed
    assert len({tuple(map(tuple, v.bars)) for v in vars_}) == 3
    for v in vars_:
        assert 0 < v.first_bar_seconds <= v.seconds <= v.total_seconds
        assert [r.bar for r in v.reports] == [5, 6, 7, 8] and v.controls == loop.measured
    # a seed given for one pass replays it; the pass number still moves on
    again = loop.next_variation(seed=101)
    assert again.number == 4 and again.bars == vars_[1].bars


def test_controls_and_settings_changed_between_passes_apply_to_the_next(engine):
    loop = LoopSession(SONG, 0, "5-8", context=2, seed=1, sample=FAST, engine=engine)
    first = loop.next_variation()
    loop.set_controls([BarControls(density=0)] * 4)
    empty = loop.next_variation()
    assert empty.notes == [] and all(r.asked.density == 0 and r.missed == [] for r in empty.reports)
    two = loop.next_variation(controls=[BarControls(density=2)] * 4, sample=SampleConfig(max_notes_per_bar=2))
    assert all(r.achieved.density <= 2 for r in two.reports) and two.sample.max_notes_per_bar == 2
    assert loop.sample.max_notes_per_bar == 2                          # per-call settings stay
    loop.set_controls(None)
    assert loop.controls == loop.measured and first.controls == loop.measured


def test_a_stream_closed_early_drops_its_variation_only(engine):
    loop = LoopSession(SONG, 0, "5-8", context=2, seed=9, sample=FAST, engine=engine)
    stream = loop.stream()
    first = next(stream)
    assert first.index == 0 and stream.result is None
    stream.close()
    assert list(stream) == [] and stream.result is None
    with pytest.raises(BadRequestError):
        stream.finish()
    var = loop.next_variation()
    assert var.number == 2 and var.seed == 10


def test_bad_arguments_raise_typed_errors(engine):
    with pytest.raises(BadRequestError) as exc:
        LoopSession(SONG, 0, "1-2,5-6", engine=engine)
    assert exc.value.argument == "bars"
    with pytest.raises(BadRequestError) as exc:
        LoopSession(SONG, 0, "50-60", engine=engine)
    assert exc.value.argument == "bars"
    with pytest.raises(BadRequestError) as exc:
        LoopSession(SONG, 7, "5-8", engine=engine)
    assert exc.value.argument == "track"
    with pytest.raises(BadRequestError) as exc:
        LoopSession(SONG, 0, "5-8", context=-1, engine=engine)
    assert exc.value.argument == "context"
    loop = LoopSession(SONG, 0, "5-6", context=0, engine=engine)
    with pytest.raises(BadRequestError) as exc:
        loop.set_controls([BarControls()])
    assert exc.value.argument == "controls"
    with pytest.raises(BadRequestError):
        loop.set_controls("density=3")
    with pytest.raises(BadRequestError) as exc:
        loop.set_sample({"temperature": 1.0})
    assert exc.value.argument == "sample"
    with pytest.raises(BadRequestError):
        loop.variations(-1)
    with pytest.raises(BadRequestError) as exc:
        loop.next_variation(seed=-3)
    assert exc.value.argument == "seed"
    with pytest.raises(BadRequestError) as exc:
        stream_infill(SONG, 0, "5-6", variations=0, engine=engine)
    assert exc.value.argument == "variations"
    assert loop.passes == 0
