"""Pre-training loop: ``train(cfg) -> TrainResult``.

One run lives in ``cfg.out_dir``::

    train_log.csv                   step, tokens, lr, train_loss, val_loss, val_span_loss, tokens_per_s, elapsed_s,
                                    cpu_s
    checkpoints/step-0001000/       resumable: trainer.pt (weights, AdamW, counters, RNG, data position) + trainer.json
    final/                          self-sufficient model folder (model.checkpoint.save_checkpoint)

Samples are built on the fly by the data layer's :class:`~midirwkv.data.dataset.SampleDataset` (the music
layer's sample builder), whose every sample is a function of ``(seed, epoch, position)``; the loop keeps the
data position at each step boundary, so a resumed run sees the same batches as an uninterrupted one and its
loss curve is the same. The learning rate is a pure function of (step, tokens, elapsed time): linear warm-up,
then a cosine from ``lr`` to ``lr_floor`` over the run's progress (the largest of the step, token and time
fractions that are set).

The loss is the weighted token mean of the cross-entropy over the sample's loss mask (given tokens and
padding are excluded), taken over the whole optimizer step on every process; tokens of the infilled part
weigh ``span_weight`` (1 by default: the plain mean). Bar-infilling samples use ``prompt_layout``.
Validation reports it overall and on the infilled part alone (the sample's ``target_mask``: the span bars or
the written track).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from midirwkv.config import ModelConfig, TrainConfig
from midirwkv.errors import BadRequestError, CheckpointError, DataError
from midirwkv.train.batches import (
    TrainStream,
    loss_sums,
    loss_weight_sum,
    masked_losses,
    mean_losses,
    to_device,
    training_loss,
    validation_batches,
)
from midirwkv.train.distributed import all_reduce_sum, barrier, setup_distributed
from midirwkv.train.runlog import (
    FINAL_DIR,
    LOG_NAME,
    CsvLog,
    latest_checkpoint,
    load_resumable,
    save_resumable,
)

# --------------------------------------------------------------------------------------------------------
# Results


@dataclass
class StepInfo:
    """What the optional ``callback`` of :func:`train` receives after each optimizer step."""

    step: int
    tokens: int
    lr: float
    loss: float
    elapsed_s: float
    val_loss: float | None = None
    val_span_loss: float | None = None


@dataclass
class TrainResult:
    """Outcome of :func:`train` (the same on every process, except the paths, which only rank 0 writes)."""

    steps: int
    """Optimizer steps done in total (including the resumed part)."""
    tokens: int
    """Tokens seen over all processes in total."""
    elapsed_s: float
    """Training wall time in total, over resumed sessions."""
    cpu_s: float
    """CPU time of the training process over all its threads (data-loader worker processes excluded), in total
    over resumed sessions (on this process; with DDP each process counts its own)."""
    tokens_per_s: float
    """Throughput of this session (tokens over all processes per second of wall time)."""
    train_loss: float | None
    """Loss of the last step (None if no step ran in this session)."""
    val_loss: float | None
    """Last validation loss over every predicted token."""
    val_span_loss: float | None
    """Last validation loss over the infilled part alone."""
    val_curve: list[dict] = field(default_factory=list)
    """Every validation: ``{"step", "tokens", "val_loss", "val_span_loss"}``."""
    resumed_from: int = 0
    """Step of the checkpoint this session resumed from (0 for a fresh run)."""
    log_path: Path | None = None
    checkpoint_dir: Path | None = None
    """The last resumable checkpoint written."""
    final_dir: Path | None = None
    """The exported model folder (``save_checkpoint`` format)."""
    model: Any = field(default=None, repr=False)
    """The trained :class:`~midirwkv.model.rwkv7.RWKV7` (unwrapped, eval mode)."""


# --------------------------------------------------------------------------------------------------------
# Schedule and optimizer


def lr_at(cfg: TrainConfig, step: int, tokens: int = 0, elapsed_s: float = 0.0) -> float:
    """Learning rate of optimizer step ``step`` (0-based) after ``tokens`` tokens and ``elapsed_s`` seconds.

    Linear warm-up over ``warmup_steps``, then a cosine from ``lr`` to ``lr_floor``; the cosine's progress is
    the largest of the fractions of ``max_steps`` (counted after warm-up), ``max_tokens`` and ``max_minutes``
    that are set.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    fractions = []
    if cfg.max_steps:
        fractions.append((step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    if cfg.max_tokens:
        fractions.append(tokens / cfg.max_tokens)
    if cfg.max_minutes:
        fractions.append(elapsed_s / (60.0 * cfg.max_minutes))
    progress = min(1.0, max(0.0, max(fractions)))
    return cfg.lr_floor + (cfg.lr - cfg.lr_floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups as RWKV-LM's RWKV-7 trainer: decay on >= 2-D ``*.weight``, ``att.w0`` at a scaled lr.

    Each group carries ``lr_scale`` (the loop sets ``lr = lr_at(...) * lr_scale``) and ``name``.
    """
    decay, plain, fast = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("att.w0"):
            fast.append(p)
        elif p.squeeze().dim() >= 2 and name.endswith(".weight") and cfg.weight_decay > 0:
            decay.append(p)
        else:
            plain.append(p)
    groups = [{"params": plain, "weight_decay": 0.0, "lr_scale": 1.0, "name": "plain"},
              {"params": fast, "weight_decay": 0.0, "lr_scale": cfg.w0_lr_scale, "name": "w0"}]
    if decay:
        groups.append({"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": 1.0, "name": "decay"})
    return [g for g in groups if g["params"]]


def unused_parameters(model: torch.nn.Module, device: torch.device) -> list[str]:
    """Names of trainable parameters that get no gradient (layer 0's value-residual weights, ...).

    DDP refuses parameters without gradients, and AdamW skips them anyway; they are frozen so the optimizer
    holds the same parameters in every world size (its state then loads across world sizes).
    """
    for p in model.parameters():
        p.grad = None
    model(torch.zeros((1, 2), dtype=torch.long, device=device)).float().sum().backward()
    names = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for p in model.parameters():
        p.grad = None
    return names


# --------------------------------------------------------------------------------------------------------
# Batches


# --------------------------------------------------------------------------------------------------------
# Checkpoints and log


# --------------------------------------------------------------------------------------------------------
# Setup helpers


def _resolve_tokenizer(cfg: TrainConfig) -> Path:
    if cfg.tokenizer:
        path = Path(cfg.tokenizer)
    elif cfg.init_from:
        path = Path(cfg.init_from) / "tokenizer.json"
    else:
        from midirwkv.music.vocab import SHIPPED_TOKENIZER
        path = SHIPPED_TOKENIZER
    if not path.is_file():
        raise BadRequestError("tokenizer file not found", argument="tokenizer", value=str(path),
                              fix="pass the tokenizer JSON the token cache was prepared with")
    return path


def _model_config(cfg: TrainConfig, vocab_size: int, init_cfg: ModelConfig | None) -> ModelConfig:
    model = cfg.model
    if isinstance(model, str):
        path = Path(model)
        if path.is_dir():
            path = path / "config.json"
        try:
            model = ModelConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise BadRequestError(f"cannot read the model config ({exc})", argument="model", value=cfg.model,
                                  fix="pass a config.json (or a checkpoint folder holding one)") from exc
    if init_cfg is not None:
        grows = model is not None and model.n_layer > init_cfg.n_layer and \
            dataclasses.replace(model, n_layer=init_cfg.n_layer) == init_cfg
        if model is not None and model != init_cfg and not grows:
            raise BadRequestError("model differs from the init_from checkpoint's config", argument="model",
                                  value=model, fix="leave model=None to use the checkpoint's shape, or change only "
                                                   "n_layer (upwards) to grow it")
        model = model if grows else init_cfg
    if model is None:
        model = ModelConfig(vocab_size=vocab_size)
    if model.vocab_size < vocab_size:
        raise BadRequestError("the model's vocabulary is smaller than the tokenizer's", argument="model",
                              value=model.vocab_size, fix=f"use vocab_size >= {vocab_size}")
    return model


def _data_manifest(data_dir: Path) -> dict:
    path = data_dir / "manifest.json"
    if not path.is_file():
        raise DataError("no finished token cache here (manifest.json missing)", argument="data_dir",
                        value=str(data_dir), fix="run prepare_corpus(...) into this folder first")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    keep = ("sources", "n_files", "n_kept", "per_split", "settings", "vocab_hash", "vocab_size", "created")
    return {k: manifest[k] for k in keep if k in manifest}


def _check_vocab(manifest: dict, vocab: Any, data_dir: Path) -> None:
    """The cache's base ids must mean the same tokens in ``vocab`` (its first ``vocab_size`` names)."""
    import hashlib
    n = int(manifest.get("vocab_size", 0))
    if not n or "vocab_hash" not in manifest:
        return
    if n > vocab.size:
        raise DataError("the token cache uses more ids than the tokenizer has", argument="tokenizer",
                        value=vocab.size, fix=f"use the tokenizer the cache in {data_dir} was prepared with")
    h = hashlib.sha1()
    for i in range(n):
        h.update(vocab.name(i).encode("utf-8") + b"\n")
    if h.hexdigest() != manifest["vocab_hash"]:
        raise DataError("the token cache was prepared with another tokenizer", argument="tokenizer",
                        value=str(vocab), fix=f"use the tokenizer the cache in {data_dir} was prepared with")


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------------
# The loop


def train(cfg: TrainConfig, callback: Callable[[StepInfo], None] | None = None) -> TrainResult:
    """Train (or continue training) an RWKV-7 infilling model as ``cfg`` says; see the module docstring.

    Launch with ``torchrun --nproc_per_node N`` for data-parallel training (one process per GPU, or gloo on
    CPU). ``callback`` is called on every process after each optimizer step (and after its checkpoint).
    A ``KeyboardInterrupt`` writes a checkpoint at the last finished step before it propagates.
    """
    from tqdm import tqdm

    from midirwkv.data.dataset import TokenCache
    from midirwkv.model.checkpoint import load_checkpoint, load_weights, read_checkpoint_info, save_checkpoint
    from midirwkv.model.rwkv7 import RWKV7
    from midirwkv.music.vocab import Vocab

    if not isinstance(cfg, TrainConfig):
        raise BadRequestError("train needs a TrainConfig", argument="cfg", value=type(cfg).__name__,
                              fix="pass midirwkv.config.TrainConfig(...)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = setup_distributed(cfg.device)
    device = info.device
    use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda")
    if use_bf16 and device.type != "cuda":
        raise BadRequestError("bf16 autocast needs a CUDA device", argument="dtype", value=cfg.dtype,
                              fix="use dtype='fp32' or 'auto' on CPU")
    out_dir, data_dir = Path(cfg.out_dir), Path(cfg.data_dir)
    manifest = _data_manifest(data_dir)
    tok_path = _resolve_tokenizer(cfg)
    vocab = Vocab.load(tok_path)
    _check_vocab(manifest, vocab, data_dir)
    train_cache = TokenCache(data_dir, "train")
    val_cache = TokenCache(data_dir, cfg.val_split) if cfg.eval_every and cfg.eval_batches else None

    resume_dir = latest_checkpoint(out_dir) if cfg.resume else None
    if not cfg.resume and latest_checkpoint(out_dir) is not None:
        raise BadRequestError("out_dir already holds checkpoints of another run", argument="out_dir",
                              value=str(out_dir), fix="use a new out_dir, or resume=True to continue that run")
    saved = load_resumable(resume_dir) if resume_dir is not None else None

    init_model = init_meta = init_cfg = None
    if cfg.init_from and saved is None:
        init_model, _, init_meta = load_checkpoint(cfg.init_from)
        init_cfg = init_model.cfg
    elif cfg.init_from:
        # resuming a run that started from a checkpoint: its shape and lineage, without its weights
        init_cfg, init_meta = read_checkpoint_info(cfg.init_from)
    model_cfg = _model_config(cfg, vocab.size, init_cfg)
    if saved is not None and saved["model_config"] != model_cfg.to_dict():
        raise CheckpointError("the checkpoint to resume was made for another model shape", argument="model",
                              value=model_cfg, fix=f"resume with the shape in {resume_dir} or use a new out_dir")

    torch.manual_seed(cfg.seed)
    if cfg.arch == "gpt2":
        from midirwkv.model.gpt2 import GPT2Baseline
        if init_model is not None:
            raise BadRequestError("init_from is for RWKV-7 runs", argument="init_from", value=cfg.init_from,
                                  fix="train the baseline from scratch")
        model = GPT2Baseline(model_cfg, cfg.ctx_len)
    else:
        model = RWKV7(model_cfg)
    grown_from = init_cfg.n_layer if init_cfg is not None and init_cfg.n_layer < model_cfg.n_layer else None
    if init_model is not None:
        # a plain copy: LoRA / state-tuned folders must be merged into plain weights first (tune.py's export)
        tensors = init_model.state_dict()
        if grown_from is not None:
            from midirwkv.model.checkpoint import grow_depth
            tensors = grow_depth(tensors, grown_from, model_cfg.n_layer)
        load_weights(model, tensors, source=cfg.init_from)
        del init_model, tensors
    model.to(device).train()
    for name in unused_parameters(model, device):
        model.get_parameter(name).requires_grad_(False)
    groups = param_groups(model, cfg)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                            fused=device.type == "cuda" or None)

    step, tokens, elapsed_before, cpu_before = 0, 0, 0.0, 0.0
    position = {"epoch": 0, "index": 0, "skip": 0, "workers": max(1, cfg.workers)}
    val_curve: list[dict] = []
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        step, tokens, elapsed_before = int(saved["step"]), int(saved["tokens"]), float(saved["elapsed_s"])
        cpu_before = float(saved.get("cpu_s", 0.0))   # checkpoints written before CPU time was recorded: 0
        position = dict(saved["data_position"])
        val_curve = list(saved["val_curve"])
        _set_rng_state(saved["rng"])
    resumed_from = step
    if position["workers"] != max(1, cfg.workers):
        position["skip"] = 0   # another dealing of blocks: restart at the last whole round
    barrier()

    ddp = None
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = ddp if ddp is not None else model
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext

    stream = TrainStream(train_cache, vocab, cfg, info, position["epoch"], position["index"], position["skip"])
    val_batches = validation_batches(val_cache, vocab, cfg, info) if val_cache is not None else []

    log = None
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        log = CsvLog(out_dir / LOG_NAME, resumed_from if saved is not None else None)
        (out_dir / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))

    session_start, cpu_start = time.perf_counter(), time.process_time()

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - session_start

    def cpu_used() -> float:
        return cpu_before + time.process_time() - cpu_start

    def shared_elapsed() -> float:
        # every process must see the same time: it drives the learning rate and the stop
        if not cfg.max_minutes:
            return elapsed()
        return all_reduce_sum([elapsed()], device)[0] / info.world_size

    def finished(t: float) -> bool:
        return bool((cfg.max_steps and step >= cfg.max_steps) or (cfg.max_tokens and tokens >= cfg.max_tokens)
                    or (cfg.max_minutes and t >= 60.0 * cfg.max_minutes))

    def validate() -> tuple[float, float]:
        model.eval()
        sums = loss_sums(model, val_batches, lambda b: to_device(b, device), autocast)
        model.train()
        return mean_losses(all_reduce_sum(sums, device))

    def checkpoint_state(pos: dict) -> dict:
        return {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(), "step": step, "tokens": tokens, "elapsed_s": elapsed(),
                "cpu_s": cpu_used(),
                "data_position": pos, "rng": _rng_state(), "val_curve": val_curve,
                "model_config": model_cfg.to_dict(), "train_config": cfg.to_dict()}

    last_ckpt: Path | None = resume_dir
    last_loss = val_loss = val_span = None
    if val_curve:
        val_loss, val_span = val_curve[-1]["val_loss"], val_curve[-1]["val_span_loss"]
    row_tokens, row_time = tokens, time.perf_counter()
    session_tokens = 0
    bar = tqdm(total=cfg.max_steps or None, initial=step, unit="step", file=sys.stderr, dynamic_ncols=True,
               disable=not (info.is_main and cfg.progress), desc="train")
    pos_at_step = stream.position()
    t_now = shared_elapsed()
    try:
        while not finished(t_now):
            lr = lr_at(cfg, step, tokens, t_now)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            batches = [stream.next() for _ in range(cfg.grad_accum)]
            n_mask, n_tok = all_reduce_sum([float(sum(loss_weight_sum(b, cfg.span_weight) for b in batches)),
                                            float(sum(b.n_tokens for b in batches))], device)
            scale = info.world_size / max(n_mask, 1.0)   # DDP averages gradients over processes
            loss_sum = torch.zeros((), device=device)
            for i, b in enumerate(batches):
                b = to_device(b, device)
                sync = ddp.no_sync() if ddp is not None and i < len(batches) - 1 else contextlib.nullcontext()
                with sync:
                    with autocast():
                        logits = forward(b.input_ids)
                    loss, span = masked_losses(logits, b)
                    loss = training_loss(loss, span, cfg.span_weight)
                    (loss * scale).backward()
                loss_sum += loss.detach()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tokens += int(n_tok)
            session_tokens += int(n_tok)
            pos_at_step = stream.position()
            last_loss = all_reduce_sum([float(loss_sum)], device)[0] / max(n_mask, 1.0)
            t_now = shared_elapsed()
            end = finished(t_now)

            evaluated = bool(val_batches) and (step % cfg.eval_every == 0 or end)
            if evaluated:
                val_loss, val_span = validate()
                val_curve.append({"step": step, "tokens": tokens, "val_loss": val_loss, "val_span_loss": val_span})
            now = time.perf_counter()
            if log is not None and (evaluated or step % cfg.log_every == 0 or end):
                rate = (tokens - row_tokens) / max(now - row_time, 1e-9)
                log.write({"step": step, "tokens": tokens, "lr": lr, "train_loss": last_loss,
                           "val_loss": val_loss if evaluated else None,
                           "val_span_loss": val_span if evaluated else None,
                           "tokens_per_s": round(rate, 1), "elapsed_s": round(elapsed(), 3),
                           "cpu_s": round(cpu_used(), 3)})
                row_tokens, row_time = tokens, now
            if info.is_main and (end or (cfg.ckpt_every and step % cfg.ckpt_every == 0)):
                last_ckpt = save_resumable(out_dir, checkpoint_state(pos_at_step), step, cfg.keep_last)
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{session_tokens / max(now - session_start, 1e-9):.0f}")
            if callback is not None:
                callback(StepInfo(step=step, tokens=tokens, lr=lr, loss=last_loss, elapsed_s=elapsed(),
                                  val_loss=val_loss if evaluated else None,
                                  val_span_loss=val_span if evaluated else None))
    except KeyboardInterrupt:
        if info.is_main and step > resumed_from:
            save_resumable(out_dir, checkpoint_state(pos_at_step), step, cfg.keep_last)
        raise
    finally:
        bar.close()

    session_s = time.perf_counter() - session_start
    final_dir = None
    model.eval()
    if info.is_main:
        from midirwkv.music.infill import OTHER_ORDER  # how the target-last samples ordered the other tracks

        if last_ckpt is None or int(last_ckpt.name.split("-")[1]) != step:
            last_ckpt = save_resumable(out_dir, checkpoint_state(pos_at_step), step, cfg.keep_last)
        meta = {"kind": "pretrain", "steps": step, "tokens_seen": tokens, "elapsed_s": round(elapsed(), 3),
                "cpu_s": round(cpu_used(), 3), "data_manifest": manifest, "data_dir": str(data_dir), "val_curve": val_curve,
                "last_train_loss": last_loss, "train_config": cfg.to_dict(), "other_order": OTHER_ORDER,
                "init_from": cfg.init_from or None, "init_meta": init_meta}
        if grown_from is not None:
            meta["grown_from_layers"] = grown_from
        if cfg.arch == "gpt2":
            from midirwkv.model.gpt2 import save_baseline
            final_dir = save_baseline(out_dir / FINAL_DIR, model, tok_path, meta)
        else:
            final_dir = save_checkpoint(out_dir / FINAL_DIR, model, tok_path, meta)
    barrier()
    return TrainResult(steps=step, tokens=tokens, elapsed_s=elapsed(), cpu_s=cpu_used(),
                       tokens_per_s=session_tokens / max(session_s, 1e-9), train_loss=last_loss, val_loss=val_loss, val_span_loss=val_span, val_curve=val_curve,
                       resumed_from=resumed_from, log_path=(out_dir / LOG_NAME) if info.is_main else None,
                       checkpoint_dir=last_ckpt if info.is_main else None, final_dir=final_dir, model=model)
