"""The target-last prompt layout, its record in checkpoints, the span-weighted loss and the Tempo mask."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from midirwkv.config import TrainConfig
from midirwkv.errors import BadRequestError
from midirwkv.music import remi
from midirwkv.music.examples import build_sample
from midirwkv.music.infill import LAYOUTS, InfillRequest, build_prompt, layout_of
from midirwkv.music.vocab import Vocab

FIXTURES = Path(__file__).parent / "fixtures"
POP909 = sorted((FIXTURES / "pop909").glob("*.mid"))


@pytest.fixture(scope="module")
def vocab():
    return Vocab.load()


@pytest.fixture(scope="module")
def song(vocab):
    score = remi.load_score(POP909[0])
    return score, remi.encode_score(score, vocab)


def _track_blocks(vocab, ids):
    """(program id, block ids) of each Track_Start ... Track_End block of a bar-infilling prompt."""
    blocks, cur = [], None
    for i in ids:
        if i == vocab.track_start:
            cur = []
        elif i == vocab.track_end:
            blocks.append(cur)
            cur = None
        elif cur is not None:
            cur.append(i)
    return blocks


@pytest.mark.parametrize("target", [0, 1])
def test_target_last_puts_the_target_right_before_the_span(vocab, song, target):
    _, st = song
    req = InfillRequest(track=st.tracks[target].index, start=8, end=12, context_bars=4)
    old = build_prompt(vocab, st, req, "file_order")
    new = build_prompt(vocab, st, req, "target_last", other_order="file")
    # the same tokens, the same window, the same opening: only the order of the track blocks differs
    assert Counter(old.ids) == Counter(new.ids) and old.window == new.window
    assert old.bar_headers == new.bar_headers and old.bar_controls == new.bar_controls
    blocks_old, blocks_new = _track_blocks(vocab, old.ids), _track_blocks(vocab, new.ids)
    assert vocab.infill_bar in blocks_old[target]
    assert vocab.infill_bar in blocks_new[-1] and blocks_new[-1] == blocks_old[target]
    assert blocks_new[:-1] == [b for k, b in enumerate(blocks_old) if k != target]   # others keep file order
    fill = new.ids.index(vocab.fillbar_start)
    assert new.ids[fill - 1] == vocab.track_end and new.ids.count(vocab.track_end) == len(st.tracks)
    # the target's own last context bar now ends a few tokens before the span instead of behind other tracks
    assert len(new.ids) - new.ids[::-1].index(vocab.infill_bar) > len(old.ids) - old.ids[::-1].index(vocab.infill_bar)


def test_other_tracks_come_furthest_register_first(vocab):
    """Bach's four voices, the Alto infilled: the others from the furthest register (mean pitch of the notes in the
    context bars, read from the MIDI file itself) to the nearest, the Alto last."""
    score = remi.load_score(FIXTURES.parent.parent / "src" / "midirwkv" / "assets" / "examples" / "bach_bwv269.mid")
    st = remi.encode_score(score, vocab)
    alto = next(t for t in st.tracks if t.name == "Alto")
    req = InfillRequest(track=alto.index, start=8, end=12, context_bars=4)
    prompt = build_prompt(vocab, st, req, "target_last")
    lo, hi = prompt.window
    t0, t8, t12, t1 = (st.bar_ticks[b] for b in (lo, 8, 12, hi))

    def mean_pitch(index: int) -> float:
        notes = [n.pitch for n in score.tracks[index].notes if t0 <= n.time < t8 or t12 <= n.time < t1]
        return float(np.mean(notes))

    others = sorted((t for t in st.tracks if t.index != alto.index),
                    key=lambda t: -abs(mean_pitch(t.index) - mean_pitch(alto.index)))
    programs = [vocab.id(f"Program_{t.program}") for t in others + [alto]]
    blocks = _track_blocks(vocab, prompt.ids)
    assert [b[0] for b in blocks] == programs
    assert [t.name for t in others] == ["Bass", "Soprano", "Tenor"]     # not file order (Soprano, Tenor, Bass)
    # the same blocks as file order, reordered
    file_blocks = _track_blocks(vocab, build_prompt(vocab, st, req, "target_last", other_order="file").ids)
    by_index = {t.index: b for t, b in zip([t for t in st.tracks if t.index != alto.index] + [alto], file_blocks)}
    assert blocks == [by_index[t.index] for t in others + [alto]]
    with pytest.raises(BadRequestError) as err:
        build_prompt(vocab, st, req, "target_last", other_order="random")
    assert err.value.argument == "other_order"


def test_layout_is_checked(vocab, song):
    _, st = song
    with pytest.raises(BadRequestError) as err:
        build_prompt(vocab, st, InfillRequest(track=st.tracks[0].index, start=2, end=4), "last")
    assert err.value.argument == "layout"
    with pytest.raises(BadRequestError):
        TrainConfig(data_dir="d", out_dir="o", max_steps=1, prompt_layout="reversed")
    for bad in (0, -1.0, float("nan"), 1000.0, "3"):
        with pytest.raises(BadRequestError):
            TrainConfig(data_dir="d", out_dir="o", max_steps=1, span_weight=bad)


def test_layout_recorded_and_read_back():
    assert layout_of(None) == "file_order" == layout_of({"train_config": {"lr": 1e-4}})   # older checkpoints
    assert layout_of({"train_config": TrainConfig(data_dir="d", out_dir="o", max_steps=1).to_dict()}) == LAYOUTS[0]
    assert TrainConfig(data_dir="d", out_dir="o", max_steps=1).prompt_layout == "target_last"


def test_the_engine_reads_the_layout_its_checkpoint_records(tmp_path):
    import json
    import shutil

    from midirwkv.infer.api import DEFAULT_MODEL_DIR, load_engine
    assert load_engine(threads=1).layout == "target_last"          # the bundled model since its sixth run
    old = tmp_path / "file_order_model"
    shutil.copytree(DEFAULT_MODEL_DIR, old)
    meta = json.loads((old / "meta.json").read_text())
    del meta["train_config"]["prompt_layout"]                       # as written before the layout was recorded
    (old / "meta.json").write_text(json.dumps(meta))
    assert load_engine(old, threads=1).layout == "file_order"


def test_samples_differ_only_in_track_order(vocab, song):
    _, st = song
    seen = 0
    for seed in range(12):
        a = build_sample(st, vocab, np.random.default_rng(seed), ctx_len=1024, layout="file_order")
        b = build_sample(st, vocab, np.random.default_rng(seed), ctx_len=1024, layout="target_last")
        assert (a.kind, a.track, a.span, a.pitch_shift) == (b.kind, b.track, b.span, b.pitch_shift)
        assert Counter(a.ids.tolist()) == Counter(b.ids.tolist())
        assert a.target_mask.sum() == b.target_mask.sum() and a.loss_mask.sum() == b.loss_mask.sum()
        if b.kind == "bar":
            seen += 1
            ids = b.ids.tolist()
            fill = ids.index(vocab.fillbar_start)
            assert _track_blocks(vocab, ids[:fill])[-1].count(vocab.infill_bar) == b.span[1] - b.span[0]
    assert seen


def test_span_weight_scales_only_span_tokens():
    from midirwkv.train.batches import TrainBatch, loss_weight_sum, masked_losses, training_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    loss_mask = torch.tensor([[1, 1, 1, 0, 1], [1, 1, 1, 1, 0]], dtype=torch.float32)
    span_mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.float32)
    batch = TrainBatch(torch.zeros_like(targets), targets, loss_mask, span_mask, 10)
    loss, span = masked_losses(logits, batch)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1), reduction="none").view(2, 5)
    w = loss_mask * (1 + 2.0 * span_mask)
    assert torch.allclose(training_loss(loss, span, 3.0), (ce * w).sum())
    assert loss_weight_sum(batch, 3.0) == float(w.sum()) == 8 + 2 * 4
    assert training_loss(loss, span, 1.0) is loss and loss_weight_sum(batch, 1.0) == 8


def test_no_tempo_inside_generated_bars(vocab):
    from midirwkv.infer.generate import Grammar
    g = Grammar.build(vocab, False)
    tempo = [i for i in range(vocab.size) if any(vocab.name(b).startswith("Tempo_") for b in vocab.unbpe([i]))]
    assert tempo, "the vocabulary has Tempo tokens"
    assert bool((g.next_state[:, tempo] < 0).all())
    # a position followed by a note is still fine
    pos = vocab.id("Position_0")
    assert int(g.next_state[0, pos]) >= 0
