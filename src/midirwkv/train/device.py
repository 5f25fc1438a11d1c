"""Train on a lent accelerator for a fixed number of minutes from a pack, and return a checkpoint.

``python -m midirwkv.train.device --pack device --out $OUT --minutes 9``

:func:`run_device` (settings: :class:`~midirwkv.config.DeviceConfig`):

1. checks the device and prints what it found (name, memory, capability, torch and CUDA versions), and measures
   the peak matrix-product rate that the model FLOP utilisation is reported against (bf16 on CUDA, float32 on
   the CPU);
2. loads the pack that ``midirwkv pack-device`` (:mod:`midirwkv.train.pack`) wrote: training samples built on
   the CPU by the music layer's sample builder, the CPU runs' fixed validation batches, the tokenizer. This
   module imports neither symusic nor miditok (the GPU machine has neither);
3. measures the tokens per second of each candidate size for about ``measure_s`` seconds in all, and picks the
   largest that sees ``tokens_per_param`` tokens per parameter in the training time left (or takes ``size``);
4. trains with the loop's loss, optimizer groups and schedule (:mod:`midirwkv.train.loop`), bf16 autocast on
   CUDA, on the chunked WKV path the CPU tests cover (``kernel="chunked"``; ``"auto"`` lets ``wkv.wkv`` pick a
   fused kernel when one is installed); validates and writes the checkpoint about every ``ckpt_every_s``
   seconds and at the end, and stops by itself within ``minutes``.

The returned folder ``out_dir``::

    final/           model-0001-of-000N.safetensors (fp16, each at most shard_mib), config.json, tokenizer.json,
                     meta.json (train_config with the pack's sample and validation settings; "device": hardware,
                     minutes, tokens, tokens/s, model FLOP utilisation, the sizes measured)
    train_log.csv    the loop's columns

Each checkpoint is written in a staging folder beside ``out_dir`` and moved in by renames, so a run killed at
any moment leaves the last complete checkpoint (in ``final/``, or in ``.final-next/`` if the kill falls between
two renames), and ``out_dir`` holds more than one checkpoint (more files than the loan returns) only between two
renames.
``midirwkv train --init-from OUT/final`` and ``python -m midirwkv.train.card OUT`` read it (the split weights
are joined by :func:`midirwkv.model.checkpoint.read_weights`).

The batch a step trains on is ``micro_batch`` sequences in one forward pass; the meta's ``train_config`` records
it as the validation micro-batch times ``grad_accum`` (the same step: one loss over all its tokens), so its
validation settings are those of the CPU runs and the better-only rule of publishing compares like with like.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import gc
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from midirwkv.config import DeviceConfig, ModelConfig, TrainConfig
from midirwkv.errors import BadRequestError, DataError, MidiRwkvError
from midirwkv.train.batches import (
    TrainBatch,
    loss_sums,
    loss_weight_sum,
    masked_losses,
    mean_losses,
    to_device,
    training_loss,
)
from midirwkv.train.device_model import (
    Measurement,
    Start,
    build_model,
    checkpoint_bytes,
    device_info,
    find_start,
    model_config_for,
    model_flops_per_token,
    peak_flops,
    pick_size,
    resolve_device,
    say,
)
from midirwkv.train.device_pack import (
    MIB,
    Pack,
    PackStream,
    load_pack,
)
from midirwkv.train.loop import StepInfo, lr_at, param_groups
from midirwkv.train.runlog import CSV_FIELDS, LOG_NAME

FINAL = "final"


def _flops_text(rate: float) -> str:
    return f"{rate / 1e12:.1f} TFLOP/s" if rate >= 1e12 else f"{rate / 1e9:.1f} GFLOP/s"


def process_age() -> float:
    """Seconds since this process started (Python's start-up and imports), 0 where /proc cannot tell."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            started = int(fh.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return min(max(0.0, uptime - started), 600.0)


# --------------------------------------------------------------------------------------------------------
# The pack


# --------------------------------------------------------------------------------------------------------
# Sizes, FLOPs, the device


# --------------------------------------------------------------------------------------------------------
# Start checkpoint


# --------------------------------------------------------------------------------------------------------
# Steps and measuring


def _autocast(device: torch.device) -> Callable[[], Any]:
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _optimizer(model: torch.nn.Module, tcfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, tcfg), lr=tcfg.lr, betas=tcfg.betas, eps=tcfg.eps,
                             fused=device.type == "cuda" or None)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: TrainBatch, device: torch.device,
               lr: float, span_weight: float, grad_clip: float) -> torch.Tensor:
    """One optimizer step on ``batch`` (the loop's objective: weighted token mean); the summed loss, on device."""
    for g in opt.param_groups:
        g["lr"] = lr * g["lr_scale"]
    n_mask = loss_weight_sum(batch, span_weight)
    b = to_device(batch, device)
    with _autocast(device)():
        logits = model(b.input_ids)
    loss, span = masked_losses(logits, b)
    (training_loss(loss, span, span_weight) / max(n_mask, 1.0)).backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def measure(size: str, pack: Pack, start: Start | None, cfg: DeviceConfig, tcfg: TrainConfig,
            device: torch.device, micro_batch: int, seconds: float, min_batch: int) -> Measurement:
    """Tokens per second of ``size`` for about ``seconds``: a first step on a batch of the longest samples
    (memory probe; the batch halves until it fits), then timed steps on packed batches. Weights thrown away."""
    model_cfg = model_config_for(size, int(pack.meta["vocab_size"]), start.cfg if start else None)
    model, _, _ = build_model(model_cfg, start, cfg.seed, cfg.kernel, device)
    params = sum(p.numel() for p in model.parameters())
    flops = model_flops_per_token(model)
    limit = _checkpoint_limit(model, cfg)
    if limit:
        del model
        _free(device)
        return Measurement(size, params, 0, 0.0, flops, fits=False, note=limit)
    width = int(pack.meta["train"]["ctx_len"]) - 1
    tcfg = dataclasses.replace(tcfg, model=model_cfg)
    B = micro_batch
    while True:
        opt = _optimizer(model, tcfg, device)
        stream = PackStream(pack, B, cfg.seed)
        oom = False
        try:
            train_step(model, opt, stream.next(width), device, 1e-5, cfg.span_weight, tcfg.grad_clip)
            _sync(device)
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            oom = True
        if not oom:
            break
        # freed here, outside the except block, whose traceback still holds the step's tensors
        model.zero_grad(set_to_none=True)
        del opt
        _free(device)
        if B // 2 < min_batch:
            del model
            _free(device)
            return Measurement(size, params, B, 0.0, flops, fits=False, note="out of memory")
        B = max(min_batch, (B // 2) // min_batch * min_batch)
    train_step(model, opt, stream.next(), device, 1e-5, cfg.span_weight, tcfg.grad_clip)   # untimed warm-up
    _sync(device)
    tokens, steps = 0, 0
    t = time.perf_counter()
    while steps < 2 or time.perf_counter() - t < seconds:
        batch = stream.next()
        train_step(model, opt, batch, device, 1e-5, cfg.span_weight, tcfg.grad_clip)
        _sync(device)
        tokens += batch.n_tokens
        steps += 1
    rate = tokens / max(time.perf_counter() - t, 1e-9)
    del model, opt, stream
    _free(device)
    return Measurement(size, params, B, rate, flops)


def _checkpoint_limit(model: torch.nn.Module, cfg: DeviceConfig) -> str:
    """Why ``model``'s fp16 checkpoint could not come back (too big, too many files), or ''."""
    from midirwkv.model.checkpoint import shard_plan

    size = checkpoint_bytes(model)
    if size > cfg.max_ckpt_mib * MIB:
        return f"fp16 weights {size / MIB:.1f} MiB > {cfg.max_ckpt_mib} MiB"
    half = {k: torch.empty(v.shape, dtype=torch.float16 if v.is_floating_point() else v.dtype, device="meta")
            for k, v in model.state_dict().items()}
    parts = len(shard_plan(half, int(cfg.shard_mib * MIB)))
    if parts + 4 > cfg.max_files:
        return f"{parts} weights files + config, tokenizer, meta, log > {cfg.max_files} files"
    return ""


# --------------------------------------------------------------------------------------------------------
# Checkpoints into out_dir


def _stage_root(out: Path) -> Path:
    """A staging folder on out_dir's file system, beside it when possible (renames move checkpoints in)."""
    try:
        root = Path(tempfile.mkdtemp(prefix=f".{out.name}-stage-", dir=out.resolve().parent))
        if os.stat(root).st_dev == os.stat(out).st_dev:
            return root
        shutil.rmtree(root, ignore_errors=True)
    except OSError:
        pass
    say(f"note: staging checkpoints inside {out} (its parent is not writable on the same file system)")
    return Path(tempfile.mkdtemp(prefix=".stage-", dir=out))


def _write_log(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else (repr(row[k]) if isinstance(row[k], float) else row[k])
                             for k in CSV_FIELDS})


def commit_checkpoint(stage: Path, out: Path, model: torch.nn.Module, tokenizer: Path, meta: dict,
                      rows: Sequence[dict], shard_bytes: int) -> Path:
    """Write the checkpoint and the log in ``stage``, then move them into ``out`` by renames."""
    from midirwkv.model.checkpoint import save_checkpoint

    staged = save_checkpoint(stage / FINAL, model, tokenizer, meta, dtype=torch.float16, shard_bytes=shard_bytes)
    _write_log(stage / LOG_NAME, rows)
    nxt, old, final = out / f".{FINAL}-next", stage / f"{FINAL}-old", out / FINAL
    for p in (nxt, old):
        if p.exists():
            shutil.rmtree(p)
    # out holds two checkpoints only between the first two renames, and a complete one at every moment
    # (final, or .final-next between the last two); the old one is deleted outside out
    os.rename(staged, nxt)
    if final.exists():
        os.rename(final, old)
    os.rename(nxt, final)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(stage / LOG_NAME, out / LOG_NAME)
    return final


# --------------------------------------------------------------------------------------------------------
# The run


@dataclass
class DeviceResult:
    """Outcome of :func:`run_device`."""

    size: str
    params: int
    steps: int
    tokens: int
    train_s: float
    tokens_per_s: float
    mfu: float
    val_loss: float | None
    val_span_loss: float | None
    final_dir: Path | None
    measured: list[Measurement] = field(default_factory=list)


def _train_config(cfg: DeviceConfig, pack: Pack, model_cfg: ModelConfig | None, B: int, budget_s: float,
                  start: str, eval_every: int, device: torch.device) -> TrainConfig:
    tr, va = pack.meta["train"], pack.meta["valid"]
    mb = int(va["micro_batch"])
    return TrainConfig(data_dir=str(cfg.pack), out_dir=str(cfg.out_dir), model=model_cfg, tokenizer=str(pack.tokenizer),
                       init_from=start, ctx_len=int(tr["ctx_len"]), micro_batch=mb, grad_accum=max(1, B // mb),
                       lr=cfg.lr, lr_floor=cfg.lr_floor, warmup_steps=cfg.warmup_steps,
                       max_minutes=max(budget_s, 1.0) / 60.0, eval_every=max(1, eval_every),
                       eval_batches=int(va["eval_batches"]), ckpt_every=0, seed=cfg.seed, val_seed=int(va["val_seed"]),
                       val_split=va["val_split"], p_track=float(tr["p_track"]), augment=bool(tr["augment"]),
                       prompt_layout=tr["prompt_layout"], span_weight=cfg.span_weight,
                       dtype="bf16" if device.type == "cuda" else "fp32", device=device.type, threads=cfg.threads,
                       progress=False)


def run_device(cfg: DeviceConfig, callback: Callable[[StepInfo], None] | None = None,
               started: float | None = None) -> DeviceResult:
    """Measure, pick, train and return a checkpoint within ``cfg.minutes`` (see the module docstring).

    ``callback`` is called after every optimizer step (an exception from it ends the run like a kill: the last
    complete checkpoint stays in ``out_dir``). ``started``: the ``time.perf_counter()`` the minutes count from
    (default: now; the command passes its process's start)."""
    t0 = time.perf_counter() if started is None else started
    deadline = t0 + 60.0 * cfg.minutes
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg)
    info = device_info(device)
    say("device: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    peak, peak_what = peak_flops(device)
    say(f"peak: {_flops_text(peak)} ({peak_what}, measured)")

    pack = load_pack(cfg.pack)
    tr, va = pack.meta["train"], pack.meta["valid"]
    mb_val = int(va["micro_batch"])
    say(f"pack: {pack.n_samples} samples, {pack.n_tokens / 1e6:.1f} M tokens ({tr['share']}), ctx {tr['ctx_len']}, "
         f"layout {tr['prompt_layout']}; validation: {len(pack.valid)} batches of {mb_val} "
         f"({va['val_split']} split, seed {va['val_seed']}); vocabulary {pack.meta['vocab_size']}")
    start = find_start(cfg, pack)
    if start is not None:
        say(f"start: {start.path} ({start.cfg.n_layer}x{start.cfg.n_embd}) starts the sizes of width {start.cfg.n_embd}")

    B0 = cfg.micro_batch or (64 if device.type == "cuda" else mb_val)
    if B0 % mb_val:
        raise BadRequestError("the batch must be a multiple of the validation micro-batch", argument="micro_batch",
                              value=B0, fix=f"use a multiple of {mb_val}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_tcfg = _train_config(cfg, pack, None, B0, 60.0 * cfg.minutes, "", 1, device)

    def time_left() -> float:
        return deadline - time.perf_counter()

    reserve = min(15.0, 0.1 * 60.0 * cfg.minutes)
    measured: list[Measurement] = []
    if cfg.size:
        size, B = cfg.size, B0
    else:
        sizes = list(cfg.candidates)
        per = min(cfg.measure_s, 0.3 * time_left()) / len(sizes)
        say(f"measuring {len(sizes)} sizes for about {per:.1f} s each")
        for s in sizes:
            m = measure(s, pack, start, cfg, base_tcfg, device, B0, per, mb_val)
            measured.append(m)
            left = time_left() - reserve - per * (len(sizes) - len(measured))
            say(f"  {s}: {m.params / 1e6:.2f} M parameters, batch {m.micro_batch}, {m.tokens_per_s:,.0f} tokens/s, "
                 f"{m.tokens_per_param(left):.1f} tokens/parameter in the time left"
                 + (f" (skipped: {m.note})" if not m.fits else ""))
        left = time_left() - reserve
        chosen = pick_size(measured, left, cfg.tokens_per_param)
        size, B = chosen.size, chosen.micro_batch
        why = (f"the largest that sees >= {cfg.tokens_per_param:g} tokens/parameter in {left:.0f} s"
               if chosen.tokens_per_param(left) >= cfg.tokens_per_param
               else f"no size sees {cfg.tokens_per_param:g} tokens/parameter in {left:.0f} s; this one sees the most")
        say(f"picked {size}: {why}")

    model_cfg = model_config_for(size, int(pack.meta["vocab_size"]), start.cfg if start else None)
    model, grown, from_start = build_model(model_cfg, start, cfg.seed, cfg.kernel, device)
    limit = _checkpoint_limit(model, cfg)
    if limit:
        raise BadRequestError(f"size {size} cannot come back: {limit}", argument="size", value=size,
                              fix="pick a smaller size")
    params = sum(p.numel() for p in model.parameters())
    flops = model_flops_per_token(model)
    init_from = start.path if from_start and start is not None else ""
    say(f"training {size} ({params / 1e6:.2f} M parameters, {flops / 1e6:.1f} MFLOP/token"
         + (f", from {init_from}" + (f" grown from {grown} layers" if grown else "") if init_from else ", from random weights")
         + f"), batch {B} x <= {tr['ctx_len']} tokens, kernel {cfg.kernel}, "
         + ("bf16 autocast" if device.type == "cuda" else "float32"))

    return _train(cfg, pack, model, model_cfg, params, flops, B, grown, init_from, start, device, info,
                  (peak, peak_what), measured, t0, deadline, reserve, callback)


def _train(cfg: DeviceConfig, pack: Pack, model: torch.nn.Module, model_cfg: ModelConfig, params: int, flops: float,
           B: int, grown: int | None, init_from: str, start: Start | None, device: torch.device, info: dict,
           peak: tuple[float, str], measured: list[Measurement], t0: float, deadline: float, reserve: float,
           callback: Callable[[StepInfo], None] | None) -> DeviceResult:
    out = Path(cfg.out_dir)
    mb_val = int(pack.meta["valid"]["micro_batch"])
    t_start = time.perf_counter()
    budget_s = max(1.0, deadline - t_start - reserve)
    tcfg = _train_config(cfg, pack, model_cfg, B, budget_s, init_from, 1, device)
    opt = _optimizer(model, tcfg, device)
    stream = PackStream(pack, B, cfg.seed)
    stage = _stage_root(out)
    shard_bytes = int(cfg.shard_mib * MIB)
    autocast = _autocast(device)
    step = tokens = 0
    rows: list[dict] = []
    val_curve: list[dict] = []
    last_loss: float | None = None
    val_loss = val_span = None
    eval_every = 0
    final_dir: Path | None = None
    loss_acc = torch.zeros((), device=device)
    mask_acc = 0.0
    row_t, row_tokens = time.perf_counter(), 0
    last_ckpt = last_log = time.perf_counter()

    def train_s() -> float:
        return time.perf_counter() - t_start

    def meta(finished: bool) -> dict:
        rate = tokens / max(train_s(), 1e-9)
        dev = dict(info, peak_flops=peak[0], peak_measured=peak[1], minutes_budget=cfg.minutes,
                   wall_s=round(time.perf_counter() - t0, 1), train_s=round(train_s(), 1),
                   tokens_per_s=round(rate, 1), model_flops_per_token=flops,
                   mfu=round(rate * flops / peak[0], 4), micro_batch=B, kernel=cfg.kernel,
                   autocast="bf16" if device.type == "cuda" else "none",
                   measured=[dataclasses.asdict(m) for m in measured], size=f"{model_cfg.n_layer}x{model_cfg.n_embd}",
                   params=params, finished=finished, device_config=cfg.to_dict(),
                   pack={"samples": pack.n_samples, "tokens": pack.n_tokens, "share": pack.meta["train"]["share"],
                         "passes": round(tokens / max(pack.n_tokens, 1), 3)})
        m = {"kind": "pretrain", "steps": step, "tokens_seen": tokens, "elapsed_s": round(train_s(), 3),
             "data_manifest": pack.meta.get("data_manifest", {}), "data_dir": pack.meta.get("data_dir"),
             "val_curve": val_curve, "last_train_loss": last_loss,
             "train_config": _train_config(cfg, pack, model_cfg, B, budget_s, init_from, eval_every, device).to_dict(),
             "init_from": init_from or None, "init_meta": start.meta if init_from and start else None, "device": dev,
             "other_order": pack.meta["train"].get("other_order", "file")}     # packs before the order was recorded
        if grown is not None:
            m["grown_from_layers"] = grown
        return m

    def validate_and_commit(finished: bool) -> None:
        nonlocal val_loss, val_span, final_dir, reserve, eval_every
        t = time.perf_counter()
        model.eval()
        val_loss, val_span = mean_losses(loss_sums(model, pack.valid, lambda b: to_device(b, device), autocast))
        model.train()
        eval_every = eval_every or step
        val_curve.append({"step": step, "tokens": tokens, "val_loss": val_loss, "val_span_loss": val_span})
        rows.append({"step": step, "tokens": tokens, "lr": lr, "train_loss": last_loss, "val_loss": val_loss,
                     "val_span_loss": val_span, "tokens_per_s": round(tokens / max(train_s(), 1e-9), 1),
                     "elapsed_s": round(train_s(), 3)})
        if not (math.isfinite(val_loss) and math.isfinite(val_span)):
            raise DataError("the validation loss is not finite: the checkpoint is not written", argument="lr",
                            value=cfg.lr, fix="lower --lr (the last finite checkpoint stays in the output folder)")
        final_dir = commit_checkpoint(stage, out, model, pack.tokenizer, meta(finished), rows, shard_bytes)
        took = time.perf_counter() - t
        reserve = max(reserve, 1.5 * took + 2.0)
        say(f"checkpoint at step {step}: validation loss {val_loss:.4f} (span {val_span:.4f}), "
             f"{tokens / 1e6:.1f} M tokens, written in {took:.1f} s -> {final_dir}")

    lr = 0.0
    try:
        # at least one step, so that even a run squeezed by a slow start returns a checkpoint
        while step == 0 or time.perf_counter() < deadline - reserve:
            lr = lr_at(tcfg, step, tokens, train_s())
            batch = stream.next()
            oom = False
            try:
                loss_acc += train_step(model, opt, batch, device, lr, cfg.span_weight, tcfg.grad_clip)
            except RuntimeError as exc:
                if not _is_oom(exc) or B // 2 < mb_val:
                    raise
                oom = True
            if oom:                  # freed outside the except block, whose traceback holds the step's tensors
                model.zero_grad(set_to_none=True)
                _free(device)
                B = max(mb_val, (B // 2) // mb_val * mb_val)
                stream.micro_batch = B
                say(f"out of memory: batch {B} from now on")
                continue
            mask_acc += loss_weight_sum(batch, 1.0)
            step += 1
            tokens += batch.n_tokens
            now = time.perf_counter()
            if now - last_log >= cfg.log_every_s or now - last_ckpt >= cfg.ckpt_every_s:
                last_loss = float(loss_acc) / max(mask_acc, 1.0)
                loss_acc.zero_()
                mask_acc = 0.0
                now = time.perf_counter()
                rate = (tokens - row_tokens) / max(now - row_t, 1e-9)
                rows.append({"step": step, "tokens": tokens, "lr": lr, "train_loss": last_loss,
                             "tokens_per_s": round(rate, 1), "elapsed_s": round(train_s(), 3)})
                say(f"step {step}: loss {last_loss:.4f}, lr {lr:.2e}, {tokens / 1e6:.1f} M tokens, "
                     f"{rate:,.0f} tokens/s, MFU {rate * flops / peak[0]:.1%}, {train_s():.0f} s")
                row_t, row_tokens, last_log = now, tokens, now
                if not math.isfinite(last_loss):
                    raise DataError("the training loss is not finite", argument="lr", value=cfg.lr,
                                    fix="lower --lr (the last finite checkpoint stays in the output folder)")
                if now - last_ckpt >= cfg.ckpt_every_s and deadline - reserve - now > 0.25 * cfg.ckpt_every_s:
                    validate_and_commit(False)
                    last_ckpt = time.perf_counter()
            if callback is not None:
                callback(StepInfo(step=step, tokens=tokens, lr=lr, loss=last_loss or float("nan"),
                                  elapsed_s=train_s()))
        if step:
            if mask_acc:
                last_loss = float(loss_acc) / max(mask_acc, 1.0)
            validate_and_commit(True)
    except KeyboardInterrupt:      # Ctrl-C or SIGTERM: keep what was trained since the last checkpoint
        if step and (not val_curve or val_curve[-1]["step"] != step):
            validate_and_commit(False)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    rate = tokens / max(train_s(), 1e-9)
    say(f"done: {step} steps, {tokens / 1e6:.1f} M tokens in {train_s():.0f} s of training "
         f"({time.perf_counter() - t0:.0f} s in all), {rate:,.0f} tokens/s, MFU {rate * flops / peak[0]:.1%}")
    return DeviceResult(size=f"{model_cfg.n_layer}x{model_cfg.n_embd}", params=params, steps=step, tokens=tokens,
                        train_s=train_s(), tokens_per_s=rate, mfu=rate * flops / peak[0], val_loss=val_loss,
                        val_span_loss=val_span, final_dir=final_dir, measured=measured)


# --------------------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    d = DeviceConfig(pack="PACK", out_dir="OUT")   # the defaults
    p = argparse.ArgumentParser(prog="python -m midirwkv.train.device", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack", required=True, metavar="DIR", help="folder written by `midirwkv pack-device`")
    p.add_argument("--out", required=True, metavar="DIR", help="folder the checkpoint is returned in")
    p.add_argument("--minutes", type=float, default=d.minutes, help=f"whole run, wall clock (default {d.minutes})")
    p.add_argument("--device", choices=("cuda", "cpu"), default=d.device)
    p.add_argument("--size", default="", metavar="LxC", help="model size, e.g. 8x384 (default: measure and pick)")
    p.add_argument("--candidates", default=",".join(d.candidates), help="sizes to measure, comma-separated")
    p.add_argument("--tokens-per-param", type=float, default=d.tokens_per_param)
    p.add_argument("--measure-s", type=float, default=d.measure_s, help="seconds spent measuring, all sizes")
    p.add_argument("--start", default="", metavar="DIR", help="checkpoint starting the sizes of its width ('none': "
                                                             "random weights; default: the pack's or the bundled)")
    p.add_argument("--micro-batch", type=int, default=0, help="sequences per step (default: 64 on CUDA)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-floor", type=float, default=d.lr_floor)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--span-weight", type=float, default=d.span_weight)
    p.add_argument("--ckpt-every-s", type=float, default=d.ckpt_every_s)
    p.add_argument("--log-every-s", type=float, default=d.log_every_s)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--kernel", choices=("chunked", "auto"), default=d.kernel,
                   help="WKV path: chunked (tested on the CPU) or auto (a fused kernel when installed)")
    p.add_argument("--threads", type=int, default=0)
    return p


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None, started: float | None = None) -> int:
    """The command; ``started`` as in :func:`run_device` (run as ``python -m``: the process's start)."""
    args = _parser().parse_args(argv)
    try:
        cfg = DeviceConfig(pack=args.pack, out_dir=args.out, minutes=args.minutes, device=args.device, size=args.size,
                           candidates=args.candidates, tokens_per_param=args.tokens_per_param,
                           measure_s=args.measure_s, start=args.start, micro_batch=args.micro_batch, lr=args.lr,
                           lr_floor=args.lr_floor, warmup_steps=args.warmup_steps, span_weight=args.span_weight,
                           ckpt_every_s=args.ckpt_every_s, log_every_s=args.log_every_s, seed=args.seed,
                           kernel=args.kernel, threads=args.threads)
        signal.signal(signal.SIGTERM, _terminate)
        result = run_device(cfg, started=started)
    except MidiRwkvError as exc:
        sys.stderr.write(f"device: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("device: interrupted; the last complete checkpoint is in the output folder\n")
        return 130
    print(json.dumps({k: v for k, v in dataclasses.asdict(result).items() if k != "measured"}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(started=time.perf_counter() - process_age()))
