"""The far-style experiment's pieces (issue 19, question 3): the music21 data builder on real scores of the
music21 corpus, and the state-distance functions on known tensors and on a real tuned state."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

pytest.importorskip("music21", reason="the far-style data builder reads the music21 package's score corpus "
                                      "(`pip install music21`)")

import far_style_data  # after the skip: it needs music21 at run time
import style_far

from midirwkv.music.remi import encode_score, load_score
from midirwkv.music.vocab import Vocab


@pytest.fixture(scope="module")
def vocab():
    return Vocab.load()


def _work(style: str, stem: str) -> far_style_data.Work:
    return next(w for w in far_style_data.list_works(style) if Path(w.path).stem == stem)


def test_palestrina_movement_converts_to_midi_our_encoder_reads(vocab):
    work = _work("palestrina", "Agnus_01")
    data, meta = far_style_data.to_midi_bytes(work)
    assert data[:4] == b"MThd"
    st = encode_score(load_score(data), vocab)
    assert st.n_bars >= 8 and len(st.tracks) >= 4          # a mass movement: four or more voices
    # 4/2 has no same-length twin in the vocabulary (1/4..6/4, 3/8 6/8 12/8): the encoder drops it, as prepare does
    assert meta["time_signatures"] == ["4/2"]
    assert {f"{n}/{d}" for n, d in st.time_sigs} == {"4/4"}
    assert "Copyright 2000, John Miller" in meta["rights"]
    assert meta["group"].startswith("Missa")


def test_check_midi_applies_prepares_size_rules(vocab):
    data, _ = far_style_data.to_midi_bytes(_work("bach_chorales", "bwv1.6"))
    reason, facts = far_style_data.check_midi(data, vocab)
    assert reason == "" and facts["notes"] >= far_style_data.MIN_NOTES
    reason, _ = far_style_data.check_midi(data, vocab, min_notes=10**6)
    assert reason == "too_few_notes"
    reason, _ = far_style_data.check_midi(b"MThd nonsense", vocab)
    assert reason == "encode_error"


def test_build_writes_midi_sources_and_manifest(tmp_path, vocab):
    out = tmp_path / "far_style"
    manifest = far_style_data.build(out, "palestrina", limit=2, seed=3)
    files = sorted((out / "midi").glob("*.mid"))
    assert len(files) == manifest["n_kept"] == 2
    assert len({f["group"] for f in manifest["files"]}) == 2             # never two sections of one mass
    for f in files:
        assert encode_score(load_score(f), vocab).n_bars >= far_style_data.MIN_BARS
    sources = (out / "SOURCES.md").read_text(encoding="utf-8")
    for record in manifest["files"]:
        assert record["corpus_path"] in sources and record["file"] in sources
    assert "BSD" in sources and "John Miller" in sources
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8"))["style"] == "palestrina"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]     # no temporary left behind


def test_unknown_style_is_a_typed_error():
    from midirwkv.errors import BadRequestError

    with pytest.raises(BadRequestError, match="unknown candidate"):
        far_style_data.list_works("gregorian")


def test_frobenius_per_layer_on_known_tensors():
    base = torch.zeros(3, 2, 4, 4)
    tuned = base.clone()
    tuned[1, 0, 0, 0], tuned[1, 1, 2, 3] = 3.0, 4.0
    tuned[2] = 1.0                                                        # 2 heads x 16 ones: norm sqrt(32)
    out = style_far.frobenius_per_layer(tuned, base)
    assert out["layer"] == pytest.approx([0.0, 5.0, math.sqrt(32)])
    assert out["head"][1] == pytest.approx([3.0, 4.0])
    assert out["head"][2] == pytest.approx([4.0, 4.0])
    shifted = style_far.frobenius_per_layer(tuned + 7.0, base + 7.0)   # a distance, not a norm of the tuned state
    assert shifted["layer"] == pytest.approx(out["layer"], abs=1e-5)
    cos = style_far.cosine_per_layer(tuned[1:], -tuned[1:])
    assert cos == pytest.approx([-1.0, -1.0])


def test_frobenius_rejects_mismatched_states():
    from midirwkv.errors import BadRequestError

    with pytest.raises(BadRequestError, match="same"):
        style_far.frobenius_per_layer(torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 4, 4))


def test_flat_velocity_replaces_every_velocity_token(vocab):
    data, _ = far_style_data.to_midi_bytes(_work("bach_chorales", "bwv1.6"))
    st = encode_score(load_score(data), vocab)
    flat = style_far.flat_velocity(st, vocab, velocity=40)
    kinds = [(vocab.kind(a), a, b) for t0, t1 in zip(st.tracks, flat.tracks) for b0, b1 in zip(t0.bars, t1.bars)
             for a, b in zip(b0, b1)]
    targets = {b for k, _, b in kinds if k == "Velocity"}
    assert len(targets) == 1 and vocab.name(targets.pop()) == "Velocity_42"
    assert all(a == b for k, a, b in kinds if k != "Velocity")


def test_distance_of_a_real_tuned_state(tmp_path, vocab):
    """One epoch of state tuning of the shipped model on two real Palestrina movements: the per-layer distances
    are the norms of the learned state (the base start is zero) and match the style file's tensors. (A
    random-weight model would not do: its zero-initialised output projections give the state no gradient.)"""
    from midirwkv.config import StyleConfig
    from midirwkv.infer import api
    from midirwkv.infer.style import read_style
    from midirwkv.train.style import tune_state

    if not (api.DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip("the shipped default model is not in this checkout")
    far_style_data.build(tmp_path / "data", "palestrina", limit=2, seed=5)
    engine = api.load_engine(api.DEFAULT_MODEL_DIR, threads=1)
    cfg = StyleConfig(epochs=1, ctx_len=64, micro_batch=2, val_fraction=0.0, progress=False, seed=0)
    res = tune_state(tmp_path / "data" / "midi", tmp_path / "style.safetensors", engine=engine, cfg=cfg)
    state = read_style(res.out_path).state
    base = engine.model.init_state(1).wkv[:, 0]
    assert float(base.abs().max()) == 0.0
    dist = style_far.frobenius_per_layer(state, base)
    assert len(dist["layer"]) == engine.model.cfg.n_layer
    assert dist["layer"] == pytest.approx([float(state[i].norm()) for i in range(state.shape[0])], rel=1e-5)
    assert all(d > 0 for d in dist["layer"])                              # one epoch at lr 5e-2 moves every layer


def test_hand_written_reading_survives_a_rewrite(tmp_path):
    md = tmp_path / "far_style_report.md"
    assert style_far.kept_reading(md) == ""
    block = f"{style_far.READING[0]}\n## Reading\n\nState tuning helped.\n{style_far.READING[1]}"
    md.write_text(f"# old\n\n{block}\n\n| old table |\n", encoding="utf-8")
    assert style_far.kept_reading(md) == block
