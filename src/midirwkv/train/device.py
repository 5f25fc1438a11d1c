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
import hashlib
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

import numpy as np
import torch

from midirwkv.config import DeviceConfig, ModelConfig, TrainConfig, parse_size
from midirwkv.errors import BadRequestError, CheckpointError, DataError, MidiRwkvError
from midirwkv.train.loop import (
    CSV_FIELDS,
    LOG_NAME,
    StepInfo,
    TrainBatch,
    _to,
    _unused_parameters,
    loss_sums,
    loss_weight_sum,
    lr_at,
    masked_losses,
    mean_losses,
    param_groups,
    training_loss,
)

PACK_FORMAT = 1
PACK_META = "pack.json"
PACK_TOKENIZER = "tokenizer.json"
PACK_VALID = "valid.safetensors"
PACK_START = "start"
TRAIN_PART = "train-{index:04d}.npz"
"""One part of the packed training samples: ``ids`` (uint16, samples back to back), ``offsets`` (int64, n + 1),
``span_start`` (int32: first position of the infilled part, the length when it was cut off), ``key``."""
MIB = 1024 * 1024
FINAL = "final"
BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "assets" / "default_model"


def _say(text: str) -> None:
    print(text, flush=True)


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


@dataclass
class Pack:
    """A pack loaded in memory: training samples back to back and the validation batches."""

    folder: Path
    meta: dict
    tokenizer: Path
    ids: np.ndarray
    """(tokens,) uint16: every training sample's ids, back to back."""
    offsets: np.ndarray
    """(samples + 1,) int64: sample i is ``ids[offsets[i]:offsets[i + 1]]``."""
    span_start: np.ndarray
    """(samples,) int64: first position of sample i's infilled part (its length when there is none)."""
    predicted: np.ndarray
    """(vocab,) bool: ids that are training targets (control tokens and infill markers are given, not predicted)."""
    valid: list[TrainBatch]

    @property
    def n_samples(self) -> int:
        return len(self.span_start)

    @property
    def n_tokens(self) -> int:
        """Predicted positions of all samples (each sample's length - 1, as the loop counts tokens)."""
        return int(self.offsets[-1] - self.offsets[0]) - self.n_samples

    @property
    def pad_id(self) -> int:
        return int(self.meta["pad_id"])


def valid_tensors(batches: Sequence[TrainBatch]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Validation batches as compact safetensors entries (ids int32, masks uint8) and metadata."""
    tensors: dict[str, torch.Tensor] = {}
    for k, b in enumerate(batches):
        tensors[f"{k:03d}.input_ids"] = b.input_ids.to(torch.int32)
        tensors[f"{k:03d}.targets"] = b.targets.to(torch.int32)
        tensors[f"{k:03d}.loss_mask"] = b.loss_mask.to(torch.uint8)
        tensors[f"{k:03d}.span_mask"] = b.span_mask.to(torch.uint8)
    return tensors, {"batches": str(len(batches)), "n_tokens": json.dumps([int(b.n_tokens) for b in batches])}


def read_valid(path: str | Path) -> list[TrainBatch]:
    """The validation batches of a pack, exactly as ``train.loop`` builds them (long ids, float masks)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            n_tokens = json.loads(meta["n_tokens"])
            out = []
            for k in range(int(meta["batches"])):
                out.append(TrainBatch(f.get_tensor(f"{k:03d}.input_ids").long(), f.get_tensor(f"{k:03d}.targets").long(),
                                      f.get_tensor(f"{k:03d}.loss_mask").float(),
                                      f.get_tensor(f"{k:03d}.span_mask").float(), int(n_tokens[k])))
    except Exception as exc:  # safetensors and json raise several types on damaged files
        raise DataError(f"cannot read the pack's validation batches ({exc})", argument="pack", value=str(path),
                        fix="write the pack again with `midirwkv pack-device`") from exc
    return out


def load_pack(folder: str | Path) -> Pack:
    """Read a folder written by ``midirwkv pack-device`` (numpy and safetensors only)."""
    folder = Path(folder)
    path = folder / PACK_META
    if not path.is_file():
        raise DataError("not a pack (pack.json missing)", argument="pack", value=str(folder),
                        fix="write it with `midirwkv pack-device --data CACHE_DIR -o device`")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != PACK_FORMAT:
        raise DataError("the pack was written by another format version", argument="pack", value=meta.get("format"),
                        fix="write it again with this version's `midirwkv pack-device`")
    ids, offsets, spans = [], [0], []
    for part in meta["train"]["parts"]:
        try:
            with np.load(folder / part["name"]) as z:
                if str(z["key"]) != meta["train"]["key"]:
                    raise DataError("a training part belongs to another pack", argument="pack",
                                    value=part["name"], fix="write the pack again into an empty folder")
                part_ids, part_off, part_span = z["ids"], z["offsets"].astype(np.int64), z["span_start"]
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"cannot read training part {part['name']} ({exc})", argument="pack", value=str(folder),
                            fix="copy the whole pack folder, or write it again") from exc
        ids.append(part_ids)
        offsets.extend((part_off[1:] + offsets[-1]).tolist())
        spans.append(part_span.astype(np.int64))
    tokenizer = folder / PACK_TOKENIZER
    if not tokenizer.is_file():
        raise DataError("the pack lacks its tokenizer.json", argument="pack", value=str(folder),
                        fix="write the pack again")
    predicted = np.ones(int(meta["vocab_size"]), dtype=bool)
    predicted[np.asarray(meta["given_ids"], dtype=np.int64)] = False
    pack = Pack(folder=folder, meta=meta, tokenizer=tokenizer,
                ids=np.concatenate(ids) if ids else np.zeros(0, np.uint16), offsets=np.asarray(offsets, np.int64),
                span_start=np.concatenate(spans) if spans else np.zeros(0, np.int64), predicted=predicted,
                valid=read_valid(folder / PACK_VALID))
    if pack.n_samples == 0:
        raise DataError("the pack holds no training samples", argument="pack", value=str(folder),
                        fix="write it again with a larger --max-mib")
    return pack


def make_batch(pack: Pack, indices: Sequence[int], width: int = 0) -> TrainBatch:
    """Packed samples ``indices`` as the loop's padded batch (what ``SpanCollator`` makes of the same samples);
    ``width`` pads it to at least that many positions (a memory probe at the longest length)."""
    lens = pack.offsets[np.asarray(indices) + 1] - pack.offsets[np.asarray(indices)]
    W = max(int(lens.max()) - 1, width)
    B = len(indices)
    inputs = np.full((B, W), pack.pad_id, dtype=np.int64)
    targets = np.full((B, W), pack.pad_id, dtype=np.int64)
    loss_mask = np.zeros((B, W), dtype=np.float32)
    span_mask = np.zeros((B, W), dtype=np.float32)
    n_tokens = 0
    for row, i in enumerate(indices):
        s = pack.ids[pack.offsets[i]:pack.offsets[i + 1]].astype(np.int64)
        n = len(s) - 1
        inputs[row, :n], targets[row, :n] = s[:-1], s[1:]
        loss_mask[row, :n] = pack.predicted[s[1:]]
        span_mask[row, :n] = np.arange(1, n + 1) >= pack.span_start[i]
        n_tokens += n
    return TrainBatch(torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(loss_mask),
                      torch.from_numpy(span_mask), n_tokens)


class PackStream:
    """Batches of ``micro_batch`` packed samples: the stored order first (the CPU run's), then a permutation
    seeded by ``(seed, pass)`` for every further pass."""

    def __init__(self, pack: Pack, micro_batch: int, seed: int) -> None:
        self.pack, self.micro_batch, self.seed = pack, int(micro_batch), int(seed)
        self.passes, self.pos = 0, 0
        self.order = np.arange(pack.n_samples)

    def next(self, width: int = 0) -> TrainBatch:
        idx = []
        while len(idx) < self.micro_batch:
            if self.pos == len(self.order):
                self.passes += 1
                self.pos = 0
                self.order = np.random.default_rng([self.seed, self.passes]).permutation(self.pack.n_samples)
            take = min(self.micro_batch - len(idx), len(self.order) - self.pos)
            idx.extend(int(i) for i in self.order[self.pos:self.pos + take])
            self.pos += take
        return make_batch(self.pack, idx, width)


# --------------------------------------------------------------------------------------------------------
# Sizes, FLOPs, the device


def lora_dims(width: int) -> dict[str, int]:
    """Low-rank dims of a width, by RWKV-LM's RWKV-7 suggestions (at least 32; 64/64/32/128 at width 768)."""
    def dim(factor: float, power: float) -> int:
        return max(32, int(round(factor * width ** power / 32) * 32))
    return {"decay_lora": dim(1.8, 0.5), "aaa_lora": dim(1.8, 0.5), "mv_lora": dim(1.3, 0.5),
            "gate_lora": dim(0.6, 0.8)}


def model_config_for(size: str, vocab_size: int, start: ModelConfig | None = None) -> ModelConfig:
    """The ModelConfig of ``size``; the start checkpoint's own shape (depth changed) when the width is its."""
    layers, width = parse_size(size)
    if start is not None and width == start.n_embd:
        return dataclasses.replace(start, n_layer=layers)
    head = next((h for h in (64, 32, 16, 8) if width % h == 0), width)
    return ModelConfig(vocab_size=vocab_size, n_layer=layers, n_embd=width, head_size=head, **lora_dims(width))


def model_flops_per_token(model: torch.nn.Module) -> float:
    """Training FLOPs per token: 6 x the weights used in matrix products (all but the embedding, a lookup)
    plus the WKV recurrence, 3 x 8 x layers x width x head size (forward ~4 multiply-adds per state entry,
    backward twice the forward). The usual definition behind "model FLOP utilisation"."""
    cfg = model.cfg
    weights = sum(p.numel() for n, p in model.named_parameters() if n != "emb.weight")
    return 6.0 * weights + 24.0 * cfg.n_layer * cfg.n_embd * cfg.head_size


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's weights in fp16."""
    return sum(t.numel() * (2 if t.is_floating_point() else t.element_size()) for t in model.state_dict().values())


def device_info(device: torch.device) -> dict:
    """What the run found: name, memory, versions (printed and kept in the meta)."""
    info: dict[str, Any] = {"kind": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                    multiprocessors=p.multi_processor_count, cuda=torch.version.cuda,
                    bf16=bool(torch.cuda.is_bf16_supported()))
    else:
        import platform
        info.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                    cpus=os.cpu_count())
    return info


def peak_flops(device: torch.device) -> tuple[float, str]:
    """(FLOP/s, what was measured): the rate of a large matrix product in the training's matmul dtype (bf16
    on CUDA, float32 on the CPU), best of a few timed runs."""
    if device.type == "cuda":
        n, dtype, reps = 8192, torch.bfloat16, 10
    else:
        n, dtype, reps = 512, torch.float32, 5
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    dt = time.perf_counter() - t
    del a, b
    return 2.0 * n ** 3 * reps / dt, f"{str(dtype).removeprefix('torch.')} {n}x{n}x{n} matrix product"


def _resolve_device(cfg: DeviceConfig) -> torch.device:
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise BadRequestError("no CUDA device is visible", argument="device", value="cuda",
                                  fix="run on the GPU machine, or pass --device cpu for a dry run")
        return torch.device("cuda", 0)
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------------------
# Start checkpoint


@dataclass
class Start:
    """Weights that start the sizes of their width."""

    path: str
    cfg: ModelConfig
    tensors: dict[str, torch.Tensor]
    meta: dict


def _sha(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def find_start(cfg: DeviceConfig, pack: Pack) -> Start | None:
    """The start checkpoint (see ``DeviceConfig.start``), or None; one made with another tokenizer is skipped."""
    from midirwkv.model.checkpoint import read_weights

    if cfg.start == "none":
        return None
    if cfg.start:
        folder = Path(cfg.start)
    elif (pack.folder / PACK_START).is_dir():
        folder = pack.folder / PACK_START
    else:
        folder = BUNDLED_MODEL
    if not (folder / "config.json").is_file():
        if cfg.start:
            raise CheckpointError("the start checkpoint is not a checkpoint folder", argument="start", value=cfg.start,
                                  fix="pass a folder with config.json, tokenizer.json, meta.json and weights")
        return None
    if _sha(folder / "tokenizer.json") != _sha(pack.tokenizer):
        _say(f"start: {folder} uses another tokenizer than the pack: every size starts from random weights")
        return None
    tensors, _ = read_weights(folder)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    mcfg = ModelConfig.from_dict(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    # recorded relative to the repository root when under it, so that the path means the same thing back home
    here = Path.cwd().resolve()
    path = os.path.relpath(folder.resolve(), here) if folder.resolve().is_relative_to(here) else str(folder)
    return Start(path=path, cfg=mcfg, tensors=tensors, meta=meta)


def build_model(model_cfg: ModelConfig, start: Start | None, seed: int, kernel: str,
                device: torch.device) -> tuple[torch.nn.Module, int | None, bool]:
    """(model on ``device`` in train mode, layers it was grown from or None, whether it starts from ``start``)."""
    from midirwkv.model.checkpoint import grow_depth, load_weights
    from midirwkv.model.rwkv7 import RWKV7

    torch.manual_seed(seed)
    with torch.device(device):          # initialised where it trains (orthogonal init of big matrices is slow on a CPU)
        model = RWKV7(model_cfg)
    model.wkv_kernel = kernel
    grown, used = None, False
    if start is not None and dataclasses.replace(model_cfg, n_layer=start.cfg.n_layer) == start.cfg \
            and model_cfg.n_layer >= start.cfg.n_layer:
        tensors = start.tensors
        if model_cfg.n_layer > start.cfg.n_layer:
            grown = start.cfg.n_layer
            tensors = grow_depth(tensors, grown, model_cfg.n_layer)
        load_weights(model, tensors, source=start.path)
        used = True
    model.to(device).train()
    for name in _unused_parameters(model, device):
        model.get_parameter(name).requires_grad_(False)
    return model, grown, used


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
    b = _to(batch, device)
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


@dataclass
class Measurement:
    """Throughput of one candidate size."""

    size: str
    params: int
    micro_batch: int
    tokens_per_s: float
    flops_per_token: float
    fits: bool = True
    """False when even the smallest batch did not fit in memory, or the checkpoint would pass its limits."""
    note: str = ""

    def tokens_per_param(self, seconds: float) -> float:
        return self.tokens_per_s * seconds / max(self.params, 1)


def pick_size(measured: Sequence[Measurement], seconds: float, tokens_per_param: float) -> Measurement:
    """The largest fitting candidate that sees ``tokens_per_param`` tokens per parameter in ``seconds``;
    when none does, the fitting one that sees the most tokens per parameter."""
    fitting = [m for m in measured if m.fits and m.tokens_per_s > 0]
    if not fitting:
        raise BadRequestError("no candidate size fits this device", argument="candidates",
                              value=[m.size for m in measured], fix="name smaller sizes, or a smaller --micro-batch")
    good = [m for m in fitting if m.tokens_per_param(seconds) >= tokens_per_param]
    if good:
        return max(good, key=lambda m: m.params)
    return max(fitting, key=lambda m: m.tokens_per_param(seconds))


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
    _say(f"note: staging checkpoints inside {out} (its parent is not writable on the same file system)")
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
    device = _resolve_device(cfg)
    info = device_info(device)
    _say("device: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    peak, peak_what = peak_flops(device)
    _say(f"peak: {_flops_text(peak)} ({peak_what}, measured)")

    pack = load_pack(cfg.pack)
    tr, va = pack.meta["train"], pack.meta["valid"]
    mb_val = int(va["micro_batch"])
    _say(f"pack: {pack.n_samples} samples, {pack.n_tokens / 1e6:.1f} M tokens ({tr['share']}), ctx {tr['ctx_len']}, "
         f"layout {tr['prompt_layout']}; validation: {len(pack.valid)} batches of {mb_val} "
         f"({va['val_split']} split, seed {va['val_seed']}); vocabulary {pack.meta['vocab_size']}")
    start = find_start(cfg, pack)
    if start is not None:
        _say(f"start: {start.path} ({start.cfg.n_layer}x{start.cfg.n_embd}) starts the sizes of width {start.cfg.n_embd}")

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
        _say(f"measuring {len(sizes)} sizes for about {per:.1f} s each")
        for s in sizes:
            m = measure(s, pack, start, cfg, base_tcfg, device, B0, per, mb_val)
            measured.append(m)
            left = time_left() - reserve - per * (len(sizes) - len(measured))
            _say(f"  {s}: {m.params / 1e6:.2f} M parameters, batch {m.micro_batch}, {m.tokens_per_s:,.0f} tokens/s, "
                 f"{m.tokens_per_param(left):.1f} tokens/parameter in the time left"
                 + (f" (skipped: {m.note})" if not m.fits else ""))
        left = time_left() - reserve
        chosen = pick_size(measured, left, cfg.tokens_per_param)
        size, B = chosen.size, chosen.micro_batch
        why = (f"the largest that sees >= {cfg.tokens_per_param:g} tokens/parameter in {left:.0f} s"
               if chosen.tokens_per_param(left) >= cfg.tokens_per_param
               else f"no size sees {cfg.tokens_per_param:g} tokens/parameter in {left:.0f} s; this one sees the most")
        _say(f"picked {size}: {why}")

    model_cfg = model_config_for(size, int(pack.meta["vocab_size"]), start.cfg if start else None)
    model, grown, from_start = build_model(model_cfg, start, cfg.seed, cfg.kernel, device)
    limit = _checkpoint_limit(model, cfg)
    if limit:
        raise BadRequestError(f"size {size} cannot come back: {limit}", argument="size", value=size,
                              fix="pick a smaller size")
    params = sum(p.numel() for p in model.parameters())
    flops = model_flops_per_token(model)
    init_from = start.path if from_start and start is not None else ""
    _say(f"training {size} ({params / 1e6:.2f} M parameters, {flops / 1e6:.1f} MFLOP/token"
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
             "init_from": init_from or None, "init_meta": start.meta if init_from and start else None, "device": dev}
        if grown is not None:
            m["grown_from_layers"] = grown
        return m

    def validate_and_commit(finished: bool) -> None:
        nonlocal val_loss, val_span, final_dir, reserve, eval_every
        t = time.perf_counter()
        model.eval()
        val_loss, val_span = mean_losses(loss_sums(model, pack.valid, lambda b: _to(b, device), autocast))
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
        _say(f"checkpoint at step {step}: validation loss {val_loss:.4f} (span {val_span:.4f}), "
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
                _say(f"out of memory: batch {B} from now on")
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
                _say(f"step {step}: loss {last_loss:.4f}, lr {lr:.2e}, {tokens / 1e6:.1f} M tokens, "
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
    _say(f"done: {step} steps, {tokens / 1e6:.1f} M tokens in {train_s():.0f} s of training "
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
