"""TokenCache, SampleDataset (reproducible, resumable) and collate."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import symusic
import torch
from test_data_corpora import REAL, FakeControls, FakeScoreTokens, FakeTrack, fake_encode, run
from torch.utils.data import DataLoader

from midirwkv.data import dataset
from midirwkv.data.dataset import Batch, Collator, SampleDataset, TokenCache, collate, epoch_order
from midirwkv.errors import DataError

HAVE_MUSIC = all(importlib.util.find_spec(m) is not None
                 for m in ("midirwkv.music.remi", "midirwkv.music.controls", "midirwkv.music.vocab"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prep")
    src = root / "in"
    src.mkdir()
    for p in REAL:
        shutil.copy(p, src / p.name)
    run([src], root / "out", splits=(0.75, 0.125, 0.125))
    return root / "out"


@pytest.fixture
def fake_types(monkeypatch):
    monkeypatch.setattr(dataset, "_music_types", lambda: (FakeScoreTokens, FakeTrack, FakeControls))


def fake_build(st, vocab, rng, ctx_len=64):
    """Stand-in sample builder: a random slice of one track's flattened bars, mask on every other token."""
    track = st.tracks[int(rng.integers(len(st.tracks)))]
    flat = [t for bar in track.bars for t in bar]
    n = int(rng.integers(4, ctx_len))
    start = int(rng.integers(0, max(1, len(flat) - n)))
    ids = [vocab] + flat[start:start + n]  # ``vocab`` stands for BOS in this stand-in
    return {"ids": ids, "loss_mask": [i % 2 for i in range(len(ids))]}


def test_cache_basics(prepared, fake_types):
    cache = TokenCache(prepared, "train")
    assert len(cache) >= 6
    assert cache.n_tokens == sum(len(b) for b in cache.iter_bars())
    st = cache[0]
    assert isinstance(st, FakeScoreTokens) and isinstance(st.tracks[0].controls[0], FakeControls)
    assert cache[-1] == cache[len(cache) - 1]
    with pytest.raises(IndexError):
        cache[len(cache)]
    assert len(list(cache.iter_bars(limit=5))) == 5
    # pickles without its memmaps (DataLoader workers reopen them)
    import pickle
    clone = pickle.loads(pickle.dumps(cache))
    assert clone[0] == st
    with pytest.raises(DataError):
        TokenCache(prepared, "dev")
    with pytest.raises(DataError):
        TokenCache(prepared.parent, "train")


def _collect(ds, **loader_kw):
    out = []
    for batch in DataLoader(ds, collate_fn=Collator(0), **loader_kw):
        for row in range(batch.input_ids.shape[0]):
            out.append(batch.input_ids[row].tolist())
    return out


def test_samples_reproducible_across_workers_and_ranks(prepared, fake_types):
    cache = TokenCache(prepared, "train")
    n = len(cache)
    one = [fake_build(cache[int(epoch_order(n, 7, 1)[p])], 1, dataset.sample_rng(7, 1, p)) for p in range(n)]
    ds = SampleDataset(cache, 1, seed=7, epoch=1, build=fake_build)
    assert [s["ids"] for s in ds] == [s["ids"] for s in one]
    # two ranks, each with its own share: together the same samples
    shares = [list(SampleDataset(cache, 1, seed=7, epoch=1, build=fake_build, rank=r, world_size=2))
              for r in range(2)]
    assert sorted(map(tuple, (s["ids"] for sh in shares for s in sh))) == sorted(tuple(s["ids"]) for s in one)
    # another epoch: another order / other samples
    assert [s["ids"] for s in SampleDataset(cache, 1, seed=7, epoch=2, build=fake_build)] != \
           [s["ids"] for s in one]


def test_dataloader_workers_and_resume(prepared, fake_types):
    cache = TokenCache(prepared, "train")
    block = 2
    ds = SampleDataset(cache, 1, seed=3, block=block, build=fake_build)
    single = _collect(ds, batch_size=block, num_workers=0)
    multi = _collect(SampleDataset(cache, 1, seed=3, block=block, build=fake_build), batch_size=block,
                     num_workers=2)
    # same samples in the same order (padding width can differ per batch; compare unpadded prefixes)
    strip = [[t for t in row if t != 0] for row in single]
    assert [[t for t in row if t != 0] for row in multi] == strip
    # resume after 1 batch: the rest is identical
    resumed = _collect(SampleDataset(cache, 1, seed=3, block=block, build=fake_build, start_index=block),
                       batch_size=block, num_workers=0)
    assert [[t for t in row if t != 0] for row in resumed] == strip[block:]


def test_collate_pads_and_shifts():
    batch = collate([{"ids": [5, 6, 7, 8], "loss_mask": [0, 1, 0, 1]}, ([9, 10], [1, 1])], pad_id=0)
    assert isinstance(batch, Batch)
    assert batch.input_ids.tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch.targets.tolist() == [[6, 7, 8], [10, 0, 0]]
    assert batch.loss_mask.tolist() == [[1, 0, 1], [1, 0, 0]]
    assert batch.input_ids.dtype == torch.long
    with pytest.raises(DataError):
        collate([{"ids": [1], "loss_mask": [1]}], pad_id=0)
    with pytest.raises(DataError):
        collate([], pad_id=0)


def test_bad_arguments(prepared, fake_types):
    cache = TokenCache(prepared, "train")
    with pytest.raises(DataError):
        SampleDataset(cache, 1, rank=2, world_size=2, build=fake_build)
    with pytest.raises(DataError):
        SampleDataset(cache, 1, start_index=-1, build=fake_build)


@pytest.mark.skipif(not HAVE_MUSIC, reason="music layer (remi, controls, vocab) not written yet")
def test_real_encoder_round_trip(tmp_path):
    from midirwkv.music import remi
    from midirwkv.music.vocab import Vocab

    vocab = Vocab.load()
    src = tmp_path / "in"
    src.mkdir()
    for p in REAL[:3]:
        shutil.copy(p, src / p.name)
    rep = dataset_prepare(src, tmp_path / "out", vocab)
    assert rep.n_kept == 3
    cache = TokenCache(tmp_path / "out", "train")
    assert len(cache) == 3
    for i in range(3):
        name = cache.file_meta(i)["name"]
        expected = remi.encode_score(remi.load_score((src / name).read_bytes()), vocab)
        assert cache[i] == expected
    assert np.all(np.fromfile(tmp_path / "out" / "train" / "tokens.bin", dtype=np.uint16) < vocab.size)


def dataset_prepare(src, out, vocab):
    from midirwkv.data.corpora import prepare_corpus
    return prepare_corpus([src], out, vocab=vocab, splits=(1.0, 0.0, 0.0), workers=1, progress=False)


def test_fake_encoder_is_consistent_with_symusic():
    # guards the stand-in the other tests rely on
    st = fake_encode(symusic.Score.from_midi(REAL[0].read_bytes()), None)
    assert len(st.bar_ticks) == len(st.time_sigs) + 1
    assert all(len(t.bars) == len(st.time_sigs) for t in st.tracks)
