"""One-shot accelerator training on the CPU: the pack, the device command, kills, and the way back home."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from midirwkv.config import DeviceConfig, ModelConfig, TrainConfig
from midirwkv.errors import BadRequestError
from midirwkv.model.checkpoint import load_checkpoint, weight_files
from midirwkv.train.device import main, run_device
from midirwkv.train.device_model import Measurement, build_model, find_start, model_config_for, pick_size
from midirwkv.train.device_pack import PackStream, load_pack, make_batch
from midirwkv.train.pack import default_pack_config, pack_device

CORPUS = Path(__file__).parent / "fixtures" / "corpus" / "pop909"
SRC = Path(__file__).resolve().parent.parent / "src"
PACK_SETTINGS = {"ctx_len": 96, "micro_batch": 2, "eval_batches": 2}
BLOCK = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("symusic", "miditok"):
            raise ImportError(f"{name} is not installed on the GPU machine")
        return None
sys.meta_path.insert(0, Block())
"""
BLOCKED_RUNNER = BLOCK + """
sys.argv = ["midirwkv.train.device", *sys.argv[1:]]
runpy.run_module("midirwkv.train.device", run_name="__main__")
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """12 POP909 songs as a token cache: 8 train, 2 valid, 2 test files."""
    from midirwkv.data import prepare_corpus
    out = tmp_path_factory.mktemp("device_cache") / "cache"
    prepare_corpus([f"{CORPUS}::4/4"], out, workers=1, progress=False, splits=(0.6, 0.2, 0.2))
    return out


@pytest.fixture(scope="module")
def pack(cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("device_pack") / "pack"
    pack_device(cache, out, default_pack_config(cache, out, **PACK_SETTINGS), part_samples=8, max_samples=24,
                progress=False)
    return out


def device_args(pack: Path, out: Path, *extra: str) -> list[str]:
    return ["--pack", str(pack), "--out", str(out), "--device", "cpu", "--size", "2x32", "--threads", "1",
            "--micro-batch", "2", "--start", "none", *extra]


def blocked_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# ------------------------------------------------------------------------------------------- the pack


def test_pack_holds_the_cpu_runs_samples_and_validation_batches(cache, pack):
    """Training samples are the CPU stream's first ones, in its order, across epochs; the validation batches are
    bit for bit the loop's; the pack states its share of the train split."""
    from midirwkv.data.dataset import SampleDataset, TokenCache
    from midirwkv.music.vocab import Vocab
    from midirwkv.train.batches import SpanCollator, validation_batches
    from midirwkv.train.distributed import DistInfo

    p = load_pack(pack)
    vocab = Vocab.load(p.tokenizer)
    cfg = default_pack_config(cache, pack, **PACK_SETTINGS)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)
    want = validation_batches(TokenCache(cache, "valid"), vocab, cfg, info)
    assert len(p.valid) == len(want) == 2
    for got, ref in zip(p.valid, want, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(got[:4], ref[:4], strict=True)) and got.n_tokens == ref.n_tokens
    train = TokenCache(cache, "train")
    assert p.n_samples == 24 and len(train) == 8          # three epochs of the 8 train files
    collate = SpanCollator(vocab.pad)
    for epoch in (0, 2):
        ds = SampleDataset(train, vocab, seed=0, epoch=epoch, ctx_len=96, p_track=0.25, augment_data=True,
                           layout="target_last")
        samples = [s for _, s in zip(range(3), ds, strict=False)]
        ref = collate(samples)
        got = make_batch(p, [8 * epoch, 8 * epoch + 1, 8 * epoch + 2])
        assert all(torch.equal(a, b) for a, b in zip(got[:4], ref[:4], strict=True)) and got.n_tokens == ref.n_tokens
    meta = p.meta
    assert meta["train"]["share"].startswith("8 of 8 train files (100.0 %), 3.00 samples per file")
    assert meta["valid"] == {"val_split": "valid", "val_seed": 0, "eval_batches": 2, "micro_batch": 2, "ctx_len": 96,
                             "p_track": 0.25, "prompt_layout": "target_last", "samples": 4,
                             "tokens": meta["valid"]["tokens"]}
    stream = PackStream(p, 5, seed=0)
    firsts = [stream.next().input_ids.shape[0] for _ in range(10)]
    assert firsts == [5] * 10 and stream.passes == 2


def test_pack_stays_within_its_size_and_resumes(cache, tmp_path):
    """A small budget keeps fewer samples and never passes it; a rerun reuses the parts; a bigger one adds."""
    out = tmp_path / "small"
    cfg = default_pack_config(cache, out, **PACK_SETTINGS)
    fixed = 0.49     # tokenizer (~0.23 MiB) + room for pack.json (0.25 MiB) + validation batches: a few parts more
    meta = pack_device(cache, out, cfg, max_mib=fixed, part_samples=4, max_samples=64, progress=False)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size <= fixed * 2 ** 20 and meta["bytes"] == size
    assert 0 < meta["train"]["samples"] < 64 and meta["train"]["samples"] % 4 == 0
    before = {f.name: f.stat().st_mtime_ns for f in out.glob("train-*.npz")}
    again = pack_device(cache, out, cfg, max_mib=fixed, part_samples=4, max_samples=64, progress=False)
    assert again["train"]["parts"] == meta["train"]["parts"]
    assert {f.name: f.stat().st_mtime_ns for f in out.glob("train-*.npz")} == before      # reused, not rebuilt
    with pytest.raises(BadRequestError, match="fixed files"):
        pack_device(cache, tmp_path / "tiny", cfg, max_mib=0.3, progress=False)


def test_pack_device_command(cache, tmp_path, capsys):
    from midirwkv.cli import main as cli_main

    out = tmp_path / "cli_pack"
    assert cli_main(["pack-device", "--data", str(cache), "-o", str(out), "--ctx-len", "96", "--micro-batch", "2",
                     "--eval-batches", "2", "--max-samples", "8", "--part-samples", "4", "-q"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["samples"] == 8 and printed["validation_samples"] == 4 and printed["bytes"] < 2 ** 20


# ------------------------------------------------------------------------------------------- the device run


def test_device_command_on_cpu_without_symusic_or_miditok(pack, tmp_path):
    """The exact device command with --device cpu and a tiny size, in a process where symusic and miditok cannot
    be imported: it trains, validates, checkpoints and stops within its minutes; the folder fits the loan."""
    blocked = subprocess.run([sys.executable, "-c", BLOCK + "import miditok"], capture_output=True,
                             text=True, env=blocked_env(), timeout=60, check=False)
    assert blocked.returncode != 0 and "not installed on the GPU machine" in blocked.stderr   # the block works
    out = tmp_path / "out"
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", BLOCKED_RUNNER, *device_args(pack, out, "--minutes", "0.4",
                                                                              "--ckpt-every-s", "2")],
                          capture_output=True, text=True, env=blocked_env(), timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.perf_counter() - t < 0.4 * 60 + 5         # the budget counts from the process start
    assert "device: kind cpu" in proc.stdout and "peak:" in proc.stdout and "checkpoint at step" in proc.stdout
    files = [f for f in out.rglob("*") if f.is_file()]
    assert sorted(f.name for f in files) == ["config.json", "meta.json", "model-0001-of-0001.safetensors",
                                             "tokenizer.json", "train_log.csv"]
    assert [d.name for d in out.iterdir() if d.is_dir()] == ["final"]
    meta = json.loads((out / "final" / "meta.json").read_text())
    d = meta["device"]
    assert d["finished"] and d["kind"] == "cpu" and d["tokens_per_s"] > 0 and 0 < d["mfu"] < 1
    assert meta["train_config"]["prompt_layout"] == "target_last" and meta["tokens_seen"] > 0
    tc = meta["train_config"]
    assert (tc["micro_batch"], tc["eval_batches"], tc["ctx_len"], tc["val_seed"]) == (2, 2, 96, 0)
    model, _, _ = load_checkpoint(out / "final")
    assert model.cfg.n_layer == 2 and model.cfg.n_embd == 32
    assert meta["val_curve"] and meta["val_curve"][-1]["step"] == meta["steps"]


def test_a_run_killed_after_its_first_checkpoint_leaves_a_loadable_one(pack, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED_RUNNER, *device_args(pack, out, "--minutes", "2",
                                                                                "--ckpt-every-s", "0.3")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=blocked_env())
    try:
        deadline = time.time() + 60
        while not (out / "final" / "meta.json").is_file() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(1.0)                                  # a few more checkpoints: the kill falls anywhere
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    final = out / "final" if (out / "final").is_dir() else out / ".final-next"
    _model, _, meta = load_checkpoint(final)
    assert meta["steps"] > 0 and not meta["device"]["finished"]
    assert sum(1 for f in out.rglob("*") if f.is_file()) <= 8


def test_a_run_ended_by_an_exception_keeps_its_last_checkpoint(pack, tmp_path):
    out = tmp_path / "raised"
    seen: list[int] = []

    def stop(info):
        if (out / "final").is_dir():
            seen.append(info.step)
        if len(seen) > 3:                                # a few steps after the first checkpoint
            raise RuntimeError("the machine went away")

    cfg = DeviceConfig(pack=str(pack), out_dir=str(out), device="cpu", size="2x32", threads=1, micro_batch=2,
                       start="none", minutes=1.0, ckpt_every_s=1.0)
    with pytest.raises(RuntimeError, match="went away"):
        run_device(cfg, callback=stop)
    _model, _, meta = load_checkpoint(out / "final")
    assert 0 < meta["steps"] <= seen[-1]     # equal when every step outlasts ckpt_every_s (a busy machine)
    assert [p.name for p in tmp_path.iterdir() if "stage" in p.name] == []      # the staging folder is removed


def test_candidates_are_measured_and_the_pick_follows_tokens_per_parameter(pack, tmp_path, capsys):
    assert main(["--pack", str(pack), "--out", str(tmp_path / "o"), "--device", "cpu", "--threads", "1",
                 "--candidates", "2x32,2x64", "--measure-s", "1", "--start", "none", "--minutes", "0.1"]) == 0
    text = capsys.readouterr().out
    assert "2x32:" in text and "2x64:" in text and "picked 2x" in text
    meta = json.loads((tmp_path / "o" / "final" / "meta.json").read_text())
    assert [m["size"] for m in meta["device"]["measured"]] == ["2x32", "2x64"]

    def m(size, params, rate, fits=True):
        return Measurement(size, params, 4, rate, 6.0 * params, fits)
    sizes = [m("a", 1_000_000, 1e6), m("b", 5_000_000, 1e6), m("c", 20_000_000, 1e6), m("d", 40_000_000, 9e9, False)]
    assert pick_size(sizes, 100.0, 20.0).size == "b"          # 100 M tokens: 20 per parameter up to 5 M
    assert pick_size(sizes, 1.0, 20.0).size == "a"            # none reaches 20: the one seeing the most
    with pytest.raises(BadRequestError):
        pick_size([sizes[-1]], 100.0, 20.0)


def test_sizes_and_settings():
    start = ModelConfig(vocab_size=4000, n_layer=4, n_embd=128, decay_lora=16, aaa_lora=16, mv_lora=16, gate_lora=32)
    assert model_config_for("8x128", 4000, start) == ModelConfig(**{**start.to_dict(), "n_layer": 8})
    big = model_config_for("12x384", 4000, start)
    assert (big.n_layer, big.n_embd, big.decay_lora, big.mv_lora, big.gate_lora) == (12, 384, 32, 32, 64)
    assert model_config_for("12x768", 4000).gate_lora == 128           # RWKV-LM's 0.1 B model
    for bad in ({"size": "big"}, {"minutes": 0}, {"device": "tpu"}, {"kernel": "fast"}, {"candidates": "4x"}):
        with pytest.raises(BadRequestError):
            DeviceConfig(**{"pack": "p", "out_dir": "o", **bad})


# ------------------------------------------------------------------------------------------- back home


def test_the_returned_folder_continues_on_the_cpu_and_publishes(cache, pack, tmp_path):
    """``train --init-from`` and the publishing step read the split weights; the card records the device run;
    the better-only rule sees the same validation samples as a CPU run's."""
    from midirwkv.train.card import _val_settings, publish
    from midirwkv.train.loop import train

    out = tmp_path / "returned"
    assert main(device_args(pack, out, "--minutes", "0.1", "--ckpt-every-s", "30")) == 0
    assert len(weight_files(out / "final")) == 1 and not (out / "final" / "model.safetensors").exists()
    cont = TrainConfig(data_dir=str(cache), out_dir=str(tmp_path / "cont"), init_from=str(out / "final"),
                       ctx_len=96, micro_batch=2, max_steps=2, warmup_steps=1, lr=1e-4, eval_every=2,
                       eval_batches=2, progress=False, threads=1)
    res = train(cont)
    assert res.steps == 2 and res.val_loss is not None
    home = json.loads((res.final_dir / "meta.json").read_text())
    assert home["init_meta"]["device"]["kind"] == "cpu"
    device_meta = json.loads((out / "final" / "meta.json").read_text())
    assert _val_settings(device_meta) == _val_settings(home)
    dest = publish(out, tmp_path / "model")
    assert (dest / "model.safetensors").is_file()
    card = (dest / "MODEL_CARD.md").read_text()
    assert "min of training on one" in card and "tokens/s, model FLOP utilisation" in card
    assert "(fp16 safetensors)" in card and "python -m midirwkv.train.device --pack device" in card
    loaded, _, _ = load_checkpoint(dest)
    assert loaded.cfg.n_embd == 32
    # a returned folder starts a later device run, grown in depth: the same function at first
    start = find_start(DeviceConfig(pack=str(pack), out_dir="unused", start=str(out / "final")), load_pack(pack))
    grown, layers, used = build_model(model_config_for("3x32", 4000, start.cfg), start, 0, "chunked",
                                      torch.device("cpu"))
    assert used and layers == 2 and grown.cfg.n_layer == 3
    idx = torch.randint(0, 4000, (1, 20))
    with torch.no_grad():
        assert torch.allclose(grown.eval()(idx), loaded(idx), atol=1e-5)
    publish(tmp_path / "cont", dest, force=True)                    # the CPU continuation: both runs listed
    card = (dest / "MODEL_CARD.md").read_text()
    assert "In total over 2 runs" in card and "min of training on one" in card
