"""Publishing a finished run as the bundled model: files, card numbers, and the better-only rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from midirwkv.config import ModelConfig, TrainConfig
from midirwkv.errors import BadRequestError, CheckpointError
from midirwkv.train.card import _cpu_text, publish
from midirwkv.train.loop import train

CORPUS = Path(__file__).parent / "fixtures" / "corpus" / "pop909"
TINY = {"n_layer": 2, "n_embd": 64, "head_size": 32, "decay_lora": 8, "aaa_lora": 8, "mv_lora": 8, "gate_lora": 16}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from midirwkv.data import prepare_corpus
    from midirwkv.music.vocab import Vocab

    root = tmp_path_factory.mktemp("card")
    prepare_corpus([f"{CORPUS}::4/4"], root / "cache", workers=1, progress=False, splits=(0.6, 0.2, 0.2))
    out = {}
    for name, steps in (("short", 2), ("long", 8)):
        cfg = TrainConfig(data_dir=str(root / "cache"), out_dir=str(root / name),
                          model=ModelConfig(vocab_size=Vocab.load().size, **TINY), ctx_len=96, micro_batch=2,
                          max_steps=steps, warmup_steps=1, lr=3e-3, eval_every=steps, eval_batches=2,
                          progress=False, threads=1)
        train(cfg)
        out[name] = root / name
    return root, out


def test_publish_writes_weights_card_and_curve_from_recorded_numbers(runs):
    root, run = runs
    dest = publish(run["short"], root / "model")
    for name in ("model.safetensors", "config.json", "tokenizer.json", "meta.json", "val_curve.png", "MODEL_CARD.md"):
        assert (dest / name).is_file(), name
    meta = json.loads((dest / "meta.json").read_text())
    card = (dest / "MODEL_CARD.md").read_text()
    assert f"Steps: {meta['steps']}" in card and f"{meta['tokens_seen']:,}" in card
    assert f"{meta['val_curve'][-1]['val_loss']:.4f}" in card
    assert "POP909: MIT" in card


def test_published_meta_names_no_absolute_path_of_the_training_machine(runs):
    import os

    root, run = runs
    dest = publish(run["short"], root / "portable")
    raw = json.loads((run["short"] / "final" / "meta.json").read_text())
    meta = json.loads((dest / "meta.json").read_text())
    assert Path(raw["data_dir"]).is_absolute()              # the run itself records where it read from
    assert not Path(meta["data_dir"]).is_absolute()
    assert Path(os.path.abspath(meta["data_dir"])) == Path(raw["data_dir"])   # still the same folder from here
    texts = []

    def strings(v):
        if isinstance(v, dict):
            for x in v.values():
                strings(x)
        elif isinstance(v, list):
            for x in v:
                strings(x)
        elif isinstance(v, str):
            texts.append(v)
    strings(meta)
    assert texts and not [t for t in texts if t.startswith("/")]


def test_publish_replaces_only_a_worse_model(runs):
    root, run = runs
    dest = root / "better_only"
    publish(run["long"], dest)
    before = (dest / "model.safetensors").read_bytes()
    with pytest.raises(BadRequestError, match="not better"):
        publish(run["short"], dest)                          # 2 steps lose to 8 steps
    assert (dest / "model.safetensors").read_bytes() == before
    publish(run["short"], dest, force=True)
    assert (dest / "model.safetensors").read_bytes() != before


def test_unfinished_run_is_a_clear_error(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="no finished model"):
        publish(tmp_path / "run", tmp_path / "model")


def test_command_line_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "midirwkv.train.card", str(tmp_path), "--out", str(tmp_path / "m")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "no finished model" in proc.stderr and "Traceback" not in proc.stderr


def test_continued_run_card_and_log_cover_the_whole_history(runs):
    """A run started from a published model: the card sums every run, the log and curve continue the old ones."""
    import csv

    from midirwkv.music.vocab import Vocab

    root, run = runs
    first = publish(run["long"], root / "lineage")
    cfg = TrainConfig(data_dir=str(root / "cache"), out_dir=str(root / "cont"), init_from=str(first),
                      model=ModelConfig(vocab_size=Vocab.load().size, **TINY), ctx_len=96, micro_batch=2,
                      max_steps=3, warmup_steps=1, lr=1e-3, eval_every=3, eval_batches=2, progress=False, threads=1)
    train(cfg)
    with open(first / "train_log.csv", newline="") as fh:
        old_rows = list(csv.DictReader(fh))
    dest = publish(root / "cont", first, force=True)
    card = (dest / "MODEL_CARD.md").read_text()
    meta0 = json.loads((run["long"] / "final" / "meta.json").read_text())
    meta1 = json.loads((dest / "meta.json").read_text())
    total = meta0["tokens_seen"] + meta1["tokens_seen"]
    assert "In total over 2 runs" in card and f"{total:,} tokens" in card
    cpu_hours = (meta0["cpu_s"] + meta1["cpu_s"]) / 3600
    assert f"{cpu_hours:.2f} CPU-hours;" in card and f"{meta1['cpu_s'] / 60:.1f} CPU-min" in card
    # a run published before CPU time was recorded counts its wall time x threads, and says so
    del meta0["cpu_s"]
    assert _cpu_text(meta0) == f"{meta0['elapsed_s'] / 60:.1f} CPU-min (wall time x threads)"
    with open(dest / "train_log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    tokens = [int(r["tokens"]) for r in rows]
    assert len(rows) > len(old_rows) and tokens == sorted(tokens) and tokens[-1] == total
    assert (dest / "val_curve.png").stat().st_size > 0


def test_runs_with_other_validation_samples_are_compared_on_the_same_ones(runs):
    """A run that validated on other samples (val_seed) cannot be compared by its logged loss: publishing asks for
    the token cache, then measures both models on the bundled model's samples and says so in the card."""
    from midirwkv.music.vocab import Vocab

    root, run = runs
    dest = publish(run["long"], root / "same_samples")
    cfg = TrainConfig(data_dir=str(root / "cache"), out_dir=str(root / "other_val"), init_from=str(dest),
                      model=ModelConfig(vocab_size=Vocab.load().size, **TINY), ctx_len=96, micro_batch=2,
                      max_steps=4, warmup_steps=1, lr=1e-3, eval_every=4, eval_batches=2, progress=False, threads=1,
                      seed=7, val_seed=5)
    train(cfg)
    with pytest.raises(BadRequestError, match="different samples"):
        publish(root / "other_val", dest)
    try:
        publish(root / "other_val", dest, data_dir=root / "cache")
    except BadRequestError as exc:
        assert "not better" in str(exc)
    else:
        assert "Compared with the model it replaced on the same 2 validation batches" in \
            (dest / "MODEL_CARD.md").read_text()


def test_validation_samples_depend_on_val_seed_not_on_seed(runs):
    import torch

    from midirwkv.data.dataset import TokenCache
    from midirwkv.music.vocab import Vocab
    from midirwkv.train.batches import validation_batches
    from midirwkv.train.distributed import DistInfo

    root, _ = runs
    cache, vocab, info = TokenCache(root / "cache", "valid"), Vocab.load(), DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)

    def ids(**kw):
        cfg = TrainConfig(data_dir=str(root / "cache"), out_dir=str(root / "x"), ctx_len=96, micro_batch=2,
                          eval_batches=2, max_steps=1, **kw)
        return torch.cat([b.input_ids.flatten() for b in validation_batches(cache, vocab, cfg, info)])

    assert torch.equal(ids(seed=0), ids(seed=9))
    assert not torch.equal(ids(val_seed=0), ids(val_seed=9))


def test_a_run_in_another_layout_is_compared_on_the_span_in_each_models_layout(runs):
    """A file-order model replaced by a target-last run: both read the same validation samples, each in its own
    layout, and the better-only rule compares the infilled tokens; the card says so and lists the layout."""
    from midirwkv.music.infill import layout_of
    from midirwkv.music.vocab import Vocab

    root, _run = runs
    old = TrainConfig(data_dir=str(root / "cache"), out_dir=str(root / "fo"), prompt_layout="file_order",
                      model=ModelConfig(vocab_size=Vocab.load().size, **TINY), ctx_len=96, micro_batch=2,
                      max_steps=2, warmup_steps=1, lr=3e-3, eval_every=2, eval_batches=2, progress=False, threads=1)
    train(old)
    dest = publish(root / "fo", root / "layout_model")
    assert layout_of(json.loads((dest / "meta.json").read_text())) == "file_order"
    new = TrainConfig(data_dir=str(root / "cache"), out_dir=str(root / "tl"), init_from=str(dest), ctx_len=96,
                      micro_batch=2, max_steps=8, warmup_steps=1, lr=3e-3, eval_every=8, eval_batches=2,
                      progress=False, threads=1, seed=3)
    train(new)
    with pytest.raises(BadRequestError, match="layouts"):
        publish(root / "tl", dest)
    publish(root / "tl", dest, data_dir=root / "cache")       # 8 steps at lr 3e-3 beat 2 steps
    card = (dest / "MODEL_CARD.md").read_text()
    assert "each model reading them in its own prompt layout (file_order before, target_last now)" in card
    assert "prompt layout target_last" in card
    assert layout_of(json.loads((dest / "meta.json").read_text())) == "target_last"
