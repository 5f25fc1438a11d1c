"""LoRA adapters and adapter files (LoRA matrices and/or a tuned initial state).

LoRA wraps a linear layer as ``W x + (alpha / rank) * B (A x)`` with ``A (rank, in)``, ``B (out, rank)``, ``B`` zero
at the start (RWKV-PEFT / PEFT naming ``lora_A``, ``lora_B``). The wrapped layer keeps its ``weight`` name, so
a model with LoRA has the same base keys (``blocks.N.att.key.weight``) plus ``...key.lora_A`` / ``lora_B``.

An adapter file is a small safetensors file with only the trainable extras: LoRA matrices and the per-layer
learned start state ``blocks.N.att.time_state`` (state tuning). Its metadata records rank, alpha and targets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midirwkv.errors import BadRequestError, CheckpointError

DEFAULT_TARGETS = ("att.receptance", "att.key", "att.value", "att.output", "ffn.key", "ffn.value")
"""Linear layers of each block that get LoRA by default (the paper's baseline)."""

ADAPTER_KIND = "midirwkv-adapter"


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(rank, int) or rank < 1:
            raise BadRequestError("LoRA rank must be a positive integer", argument="rank", value=rank,
                                  fix="use e.g. 4 or 32")
        if alpha <= 0:
            raise BadRequestError("LoRA alpha must be positive", argument="alpha", value=alpha,
                                  fix="use alpha = rank for a scale of 1")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha = rank, float(alpha)
        self.weight = base.weight
        self.weight.requires_grad_(False)
        ref = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=ref.dtype, device=ref.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=ref.dtype, device=ref.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))       # as PEFT: B = 0 keeps the model unchanged
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight) + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scale

    def merged_weight(self) -> Tensor:
        """``W + scale * B A``: the weight this layer applies (without dropout)."""
        return self.weight + (self.lora_B @ self.lora_A) * self.scale

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}"


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRA layer of ``model`` by its module name (``blocks.0.att.key``)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
    invalidate = getattr(model, "invalidate_decode_cache", None)
    if callable(invalidate):
        invalidate()


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: Sequence[str] = DEFAULT_TARGETS,
               dropout: float = 0.0, freeze: bool = True) -> list[str]:
    """Wrap each block's ``targets`` linear layers with LoRA; with ``freeze`` only LoRA matrices (and a
    tuned state, if any) keep learning. Returns the wrapped module names."""
    unknown = [t for t in targets if t not in DEFAULT_TARGETS]
    if unknown:
        raise BadRequestError("unknown LoRA targets", argument="targets", value=unknown,
                              fix=f"choose among {list(DEFAULT_TARGETS)}")
    if lora_modules(model):
        raise BadRequestError("the model already has LoRA layers", argument="model", value=len(lora_modules(model)),
                              fix="merge_lora(model) first, or load the adapter into a fresh model")
    if freeze:
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith("time_state") and p.requires_grad)
    names = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and any(name.endswith("." + t) for t in targets):
            _set_module(model, name, LoRALinear(module, rank, alpha, dropout))
            names.append(name)
    return names


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight and put plain ``nn.Linear`` layers back (in place)."""
    for name, m in lora_modules(model).items():
        lin = nn.Linear(m.in_features, m.out_features, bias=False, device=m.weight.device, dtype=m.weight.dtype)
        lin.weight.copy_(m.merged_weight())
        _set_module(model, name, lin)
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors of ``model``: LoRA matrices and learned start states."""
    return {k: v.detach() for k, v in model.state_dict().items()
            if k.endswith((".lora_A", ".lora_B", ".time_state"))}


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write the adapter tensors of ``model`` to one safetensors file (atomic: temp file then rename)."""
    from midirwkv.files import atomic_path, save_safetensors

    tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    if not tensors:
        raise BadRequestError("the model has no adapter to save", argument="model", value=None,
                              fix="apply_lora(...) or model.enable_state_tuning() before training and saving")
    mods = lora_modules(model)
    meta = {"kind": ADAPTER_KIND}
    if mods:
        first = next(iter(mods.values()))
        targets = sorted({n.split(".", 2)[2] for n in mods})
        meta.update(lora_rank=str(first.rank), lora_alpha=str(first.alpha), lora_targets=json.dumps(targets))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_safetensors(tensors, tmp, metadata=meta)
    return path


def load_adapter(model: nn.Module, path: str | Path, freeze: bool = True) -> nn.Module:
    """Load an adapter file into ``model`` (adds LoRA layers / the learned start state as needed)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError("adapter file not found", argument="path", value=str(path),
                              fix="pass the .safetensors file written by save_adapter")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as exc:  # safetensors raises several exception types on bad files
        raise CheckpointError(f"adapter file is unreadable ({exc})", argument="path", value=str(path),
                              fix="write it again with save_adapter") from exc
    if meta.get("kind") != ADAPTER_KIND:
        raise CheckpointError("not a midirwkv adapter file", argument="path", value=str(path),
                              fix="pass a file written by save_adapter (model weights go through load_checkpoint)")
    if "lora_rank" in meta and not lora_modules(model):
        apply_lora(model, int(meta["lora_rank"]), float(meta["lora_alpha"]), json.loads(meta["lora_targets"]),
                   freeze=freeze)
    if any(k.endswith(".time_state") for k in tensors) and not getattr(model, "state_tuning", True):
        model.enable_state_tuning(freeze=freeze)
    own = model.state_dict()
    for k, v in tensors.items():
        if k not in own:
            raise CheckpointError("adapter tensor does not exist in this model", argument="path", value=k,
                                  fix="load the adapter into the model it was trained for")
        if own[k].shape != v.shape:
            raise CheckpointError(f"adapter tensor {k} has shape {tuple(v.shape)}, model wants "
                                  f"{tuple(own[k].shape)}", argument="path", value=str(path),
                                  fix="load the adapter into the model (config) it was trained for")
    model.load_state_dict(tensors, strict=False)
    return model
