"""Training loop: config checks, schedule, optimizer groups, logs, checkpoints, exact resume, init_from."""

from __future__ import annotations

import csv
import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from midirwkv.config import ModelConfig, TrainConfig
from midirwkv.errors import BadRequestError
from midirwkv.model.checkpoint import load_checkpoint
from midirwkv.model.rwkv7 import RWKV7
from midirwkv.train.batches import TrainStream
from midirwkv.train.loop import StepInfo, lr_at, param_groups, train
from midirwkv.train.runlog import CSV_FIELDS, latest_checkpoint, plot_curves, read_log

CORPUS = Path(__file__).parent / "fixtures" / "corpus" / "pop909"
TINY = {"n_layer": 2, "n_embd": 64, "head_size": 32, "decay_lora": 8, "aaa_lora": 8, "mv_lora": 8, "gate_lora": 16}


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """12 POP909 songs as a token cache: 8 train, 2 valid, 2 test files."""
    from midirwkv.data import prepare_corpus
    out = tmp_path_factory.mktemp("train_cache") / "cache"
    prepare_corpus([f"{CORPUS}::4/4"], out, workers=1, progress=False, splits=(0.6, 0.2, 0.2))
    return out


def tiny_cfg(data: Path, out: Path, **kw) -> TrainConfig:
    from midirwkv.music.vocab import Vocab
    base = {"data_dir": str(data), "out_dir": str(out), "model": ModelConfig(vocab_size=Vocab.load().size, **TINY),
            "ctx_len": 96, "micro_batch": 2, "max_steps": 6, "warmup_steps": 2, "lr": 2e-3, "lr_floor": 1e-4,
            "eval_every": 3, "eval_batches": 1, "ckpt_every": 2, "keep_last": 2, "log_every": 1,
            "progress": False, "threads": 1}
    base.update(kw)
    return TrainConfig(**base)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------- config


def test_config_checks_and_round_trip(tmp_path):
    cfg = TrainConfig(data_dir="d", out_dir="o", max_steps=3, model=ModelConfig(**TINY))
    assert cfg.betas == (0.9, 0.99) and cfg.eps == 1e-18 and cfg.lr == 1e-4 and cfg.ctx_len == 1024
    back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    for bad in ({"max_steps": 0}, {"lr": 0.0}, {"lr_floor": 1.0}, {"micro_batch": 0}, {"dtype": "fp16"},
                {"betas": (0.9, 1.0)}, {"data_dir": ""}, {"grad_accum": 1.5}, {"val_split": "dev"}):
        args = {"data_dir": "d", "out_dir": "o", "max_steps": 3}
        args.update(bad)
        with pytest.raises(BadRequestError):
            TrainConfig(**args)
    with pytest.raises(BadRequestError):
        TrainConfig.from_dict({"data_dir": "d", "out_dir": "o", "max_steps": 1, "learning_rate": 1.0})


def test_lr_schedule():
    cfg = TrainConfig(data_dir="d", out_dir="o", max_steps=110, warmup_steps=10, lr=1e-3, lr_floor=1e-5)
    lrs = [lr_at(cfg, s) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))          # cosine never rises
    assert lr_at(cfg, 110) == pytest.approx(1e-5)
    assert lr_at(cfg, 60) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    # token and time budgets: the furthest one drives the cosine
    tok = TrainConfig(data_dir="d", out_dir="o", max_tokens=1000, warmup_steps=0, lr=1e-3, lr_floor=0.0)
    assert lr_at(tok, 5, tokens=500) == pytest.approx(5e-4)
    both = replace(tok, max_minutes=1.0)
    assert lr_at(both, 5, tokens=0, elapsed_s=60.0) == pytest.approx(0.0)


def test_param_groups_follow_rwkv_lm():
    model = RWKV7(ModelConfig(vocab_size=100, **TINY))
    cfg = TrainConfig(data_dir="d", out_dir="o", max_steps=1)
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    assert {"emb.weight", "head.weight", "blocks.0.att.receptance.weight", "blocks.1.ffn.value.weight"} <= decay
    assert not any(n.startswith("blocks.0.ln") or n.endswith(("w1", "w2", "a1", "x_r")) for n in decay)
    assert [names[id(p)] for p in groups["w0"]["params"]] == ["blocks.0.att.w0", "blocks.1.att.w0"]
    assert groups["w0"]["lr_scale"] == 2.0 and groups["decay"]["weight_decay"] == 0.1
    total = sum(len(g["params"]) for g in groups.values())
    assert total == sum(1 for _ in model.parameters())


# ------------------------------------------------------------------------------------------- runs


def test_train_writes_log_checkpoints_and_final(prepared, tmp_path):
    cfg = tiny_cfg(prepared, tmp_path / "run")
    seen: list[StepInfo] = []
    res = train(cfg, callback=seen.append)
    assert res.steps == 6 and [s.step for s in seen] == list(range(1, 7))
    assert res.tokens == seen[-1].tokens > 0 and res.tokens_per_s > 0
    rows = _rows(res.log_path)
    assert tuple(rows[0]) == CSV_FIELDS and [int(r["step"]) for r in rows] == list(range(1, 7))
    assert [r["step"] for r in rows if r["val_loss"]] == ["3", "6"]
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])       # it learns
    assert [c["step"] for c in res.val_curve] == [3, 6]
    assert res.val_loss == pytest.approx(float(rows[-1]["val_loss"]))
    assert res.val_span_loss is not None and res.val_span_loss != res.val_loss
    # keep_last=2 resumable checkpoints, the newest at the last step
    steps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert steps == ["step-0000004", "step-0000006"]
    assert latest_checkpoint(tmp_path / "run").name == "step-0000006"
    # the exported folder is self-sufficient and holds the run's weights
    model, tok, meta = load_checkpoint(res.final_dir)
    assert tok.is_file() and meta["steps"] == 6 and meta["tokens_seen"] == res.tokens
    assert meta["data_manifest"]["per_split"]["train"]["files"] == 8 and len(meta["val_curve"]) == 2
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])
    png = plot_curves(res.log_path, tmp_path / "curves.png")
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    # a run over an existing one without resume is refused
    with pytest.raises(BadRequestError):
        train(replace(cfg, resume=False))


class _Crash(Exception):
    pass


def test_resume_after_crash_matches_uninterrupted_run(prepared, tmp_path):
    cfg = tiny_cfg(prepared, tmp_path / "full", grad_accum=2)
    full = train(cfg)

    crashed = replace(cfg, out_dir=str(tmp_path / "crashed"))

    def crash(info: StepInfo) -> None:
        if info.step == 5:          # after the step-4 checkpoint: step 5 is lost and redone
            raise _Crash

    with pytest.raises(_Crash):
        train(crashed, callback=crash)
    assert latest_checkpoint(crashed.out_dir).name == "step-0000004"
    resumed = train(crashed)
    assert resumed.resumed_from == 4 and resumed.steps == 6 and resumed.tokens == full.tokens

    a, b = read_log(full.log_path), read_log(resumed.log_path)
    assert [r["step"] for r in b] == list(range(1, 7))             # the lost step-5 row was dropped
    for ra, rb in zip(a, b):
        for key in ("tokens", "lr", "train_loss", "val_loss", "val_span_loss"):
            if ra[key] is None:
                assert rb[key] is None
            else:
                assert rb[key] == pytest.approx(ra[key], abs=1e-6, rel=0), (ra["step"], key)
    for k, v in full.model.state_dict().items():
        assert torch.allclose(v, resumed.model.state_dict()[k], atol=1e-6, rtol=0), k
    # CPU time, like wall time, carries over the resume: it never goes backwards and the total includes both sessions
    cpu = [r["cpu_s"] for r in b]
    assert all(c > 0 for c in cpu) and cpu == sorted(cpu) and resumed.cpu_s >= cpu[-1]
    assert json.loads((resumed.final_dir / "meta.json").read_text())["cpu_s"] == pytest.approx(resumed.cpu_s, abs=0.5)


def test_init_from_released_folder_starts_a_new_run(prepared, tmp_path):
    first = train(tiny_cfg(prepared, tmp_path / "a", max_steps=2, eval_every=0, ckpt_every=0))
    cfg = tiny_cfg(prepared, tmp_path / "b", model=None, init_from=str(first.final_dir), max_steps=1, lr=1e-12,
                   lr_floor=0.0, weight_decay=0.0, warmup_steps=0, eval_every=0)
    res = train(cfg)
    assert res.resumed_from == 0 and res.steps == 1
    for k, v in first.model.state_dict().items():
        assert torch.allclose(v, res.model.state_dict()[k], atol=1e-6), k
    _, _, meta = load_checkpoint(res.final_dir)
    assert meta["init_from"] == str(first.final_dir) and meta["init_meta"]["steps"] == 2
    other = ModelConfig(vocab_size=first.model.cfg.vocab_size, **{**TINY, "n_embd": 96})
    with pytest.raises(BadRequestError):
        train(replace(cfg, out_dir=str(tmp_path / "c"), model=other))
    # resuming a run that started from a checkpoint keeps its shape and its lineage
    more = train(replace(cfg, max_steps=2))
    assert more.resumed_from == 1 and more.steps == 2
    _, _, meta = load_checkpoint(more.final_dir)
    assert meta["init_from"] == str(first.final_dir) and meta["init_meta"]["steps"] == 2


def test_init_from_grows_depth_without_changing_the_function(prepared, tmp_path):
    from midirwkv.model.checkpoint import grown_layer_sources

    assert grown_layer_sources(4, 6) == [(0, False), (1, False), (1, True), (2, False), (2, True), (3, False)]
    assert [j for j, _ in grown_layer_sources(2, 4)] == [0, 1, 1, 1]
    with pytest.raises(BadRequestError):
        grown_layer_sources(4, 3)
    first = train(tiny_cfg(prepared, tmp_path / "a", max_steps=3, eval_every=0, ckpt_every=0))
    deeper = ModelConfig(vocab_size=first.model.cfg.vocab_size, **{**TINY, "n_layer": 4})
    cfg = tiny_cfg(prepared, tmp_path / "b", model=deeper, init_from=str(first.final_dir), max_steps=1,
                   eval_every=0)
    res = train(cfg)
    model, _, meta = load_checkpoint(res.final_dir)
    assert model.cfg.n_layer == 4 and meta["grown_from_layers"] == 2
    # before any step the grown model computes exactly what the 2-layer one did
    from midirwkv.model.checkpoint import grow_depth, load_weights
    grown = RWKV7(deeper).eval()
    load_weights(grown, grow_depth(first.model.state_dict(), 2, 4))
    ids = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        assert torch.allclose(grown(ids), first.model.eval()(ids), atol=1e-5)
    # one step later the new layers have started to learn
    assert model.blocks[2].att.output.weight.abs().sum() > 0


def test_stream_position_is_exact_with_workers(prepared):
    """With 2 DataLoader workers, a stream reopened at a saved position continues with the same batches."""
    from midirwkv.data.dataset import TokenCache
    from midirwkv.music.vocab import Vocab
    from midirwkv.train.distributed import setup_distributed

    cfg = tiny_cfg(prepared, Path("unused"), micro_batch=1, workers=2)
    cache, vocab, info = TokenCache(prepared, "train"), Vocab.load(), setup_distributed("cpu")
    ref = TrainStream(cache, vocab, cfg, info, 0, 0, 0)
    ids = [ref.next().input_ids for _ in range(12)]               # 8 files: crosses into epoch 1
    for k in (3, 4, 9):
        s = TrainStream(cache, vocab, cfg, info, 0, 0, 0)
        for _ in range(k):
            s.next()
        pos = s.position()
        again = TrainStream(cache, vocab, cfg, info, pos["epoch"], pos["index"], pos["skip"])
        for j in range(k, 12):
            assert torch.equal(again.next().input_ids, ids[j]), (k, j)
    assert all(t.shape[0] == 1 for t in ids)


def test_keyboard_interrupt_saves_the_last_step(prepared, tmp_path):
    cfg = tiny_cfg(prepared, tmp_path / "run", ckpt_every=0, eval_every=0)

    def stop(info: StepInfo) -> None:
        if info.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, callback=stop)
    assert latest_checkpoint(cfg.out_dir).name == "step-0000003"
    res = train(cfg)
    assert res.resumed_from == 3 and res.steps == 6


def test_cli_grows_depth_from_a_checkpoint(prepared, tmp_path, capsys):
    from midirwkv.cli import main

    first = train(tiny_cfg(prepared, tmp_path / "a", max_steps=1, eval_every=0, ckpt_every=0))
    args = ["train", "--data", str(prepared), "-o", str(tmp_path / "b"), "--init-from", str(first.final_dir),
            "--layers", "3", "--max-steps", "1", "--ctx-len", "96", "--micro-batch", "2", "--eval-every", "0",
            "--threads", "1", "-q"]
    assert main(args) == 0
    model, _, meta = load_checkpoint(tmp_path / "b" / "final")
    assert model.cfg.n_layer == 3 and meta["grown_from_layers"] == 2
    assert main([*args[:4], str(tmp_path / "c"), *args[5:7], "--width", "96"]) == 2
    assert "--init-from fixes the model shape" in capsys.readouterr().err
    assert main([*args[:4], str(tmp_path / "d"), "--init-from", str(tmp_path), *args[7:]]) == 2
