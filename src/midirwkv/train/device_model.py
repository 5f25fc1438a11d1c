"""The model a device run trains: candidate sizes and their FLOPs, what the device is and can do, the start
checkpoint (the bundled model or the pack's), and the choice of size from measured rates."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from midirwkv.config import DeviceConfig, ModelConfig, parse_size
from midirwkv.errors import BadRequestError, CheckpointError
from midirwkv.train.device_pack import (
    BUNDLED_MODEL,
    PACK_START,
    Pack,
)
from midirwkv.train.loop import unused_parameters


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


def resolve_device(cfg: DeviceConfig) -> torch.device:
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise BadRequestError("no CUDA device is visible", argument="device", value="cuda",
                                  fix="run on the GPU machine, or pass --device cpu for a dry run")
        return torch.device("cuda", 0)
    return torch.device("cpu")


@dataclass
class Start:
    """Weights that start the sizes of their width."""

    path: str
    cfg: ModelConfig
    tensors: dict[str, torch.Tensor]
    meta: dict


def file_sha(path: Path) -> str:
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
    if file_sha(folder / "tokenizer.json") != file_sha(pack.tokenizer):
        say(f"start: {folder} uses another tokenizer than the pack: every size starts from random weights")
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
    for name in unused_parameters(model, device):
        model.get_parameter(name).requires_grad_(False)
    return model, grown, used


def say(text: str) -> None:
    print(text, flush=True)


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
