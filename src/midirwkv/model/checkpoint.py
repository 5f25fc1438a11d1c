"""Checkpoint folders (safetensors, no pickle) and RWKV-LM ``.pth`` import/export.

A checkpoint folder is self-sufficient::

    model.safetensors   weights under RWKV-LM key names (+ LoRA matrices / learned start states, if any)
    config.json         ModelConfig.to_dict()
    tokenizer.json      the tokenizer the model was trained with (copied)
    meta.json           training metadata (free-form JSON)

The weights may instead be split into ``model-0001-of-000N.safetensors`` files of a bounded size (a checkpoint
that must pass a limit on file sizes, e.g. one trained on a lent GPU); :func:`read_weights` joins them, so every
loader reads both forms. It is written to a temporary sibling folder and renamed into place, so a crash never
leaves half a folder.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch
from torch import Tensor

from midirwkv.config import ModelConfig
from midirwkv.errors import BadRequestError, CheckpointError, MidiRwkvError
from midirwkv.files import atomic_folder, save_safetensors
from midirwkv.model.lora import apply_lora, lora_modules, merge_lora
from midirwkv.model.rwkv7 import RWKV7

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
META = "meta.json"
SHARD_NAME = "model-{index:04d}-of-{count:04d}.safetensors"
"""Name of one part of split weights (1-based index)."""
_SHARD_RE = re.compile(r"^model-(\d{4})-of-(\d{4})\.safetensors$")
_HEADER_ROOM = 64 * 1024
"""Bytes kept free in each part for the safetensors header (names, shapes, offsets: a few KiB here)."""


def shard_plan(tensors: dict[str, Tensor], max_bytes: int) -> list[list[str]]:
    """Tensor names of each part when ``tensors`` are split into files of at most ``max_bytes`` (header
    included): greedy, in the dict's order, a new part when the next tensor would overflow this one."""
    room = max_bytes - _HEADER_ROOM
    if room <= 0:
        raise BadRequestError("the part size is too small for a safetensors header", argument="shard_bytes",
                              value=max_bytes, fix=f"use at least {2 * _HEADER_ROOM} bytes, e.g. 15 MiB")
    parts: list[list[str]] = [[]]
    used = 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        if size > room:
            raise BadRequestError(f"tensor {name} alone is larger than one part", argument="shard_bytes",
                                  value=max_bytes, fix=f"use parts of at least {size + _HEADER_ROOM} bytes")
        if used + size > room and parts[-1]:
            parts.append([])
            used = 0
        parts[-1].append(name)
        used += size
    return parts


def save_checkpoint(dir: str | Path, model: RWKV7, tokenizer_json_path: str | Path, meta: dict | None = None, *,
                    dtype: torch.dtype | None = None, shard_bytes: int = 0) -> Path:
    """Write ``model``, its config, a copy of ``tokenizer_json_path`` and ``meta`` to folder ``dir`` atomically.

    An existing folder at ``dir`` is replaced only once the new one is complete. ``dtype`` stores the floating
    weights in that type (e.g. ``torch.float16``; loading casts them back to the model's); ``shard_bytes > 0``
    splits them into :data:`SHARD_NAME` files of at most that many bytes each.
    """
    dir = Path(dir)
    tok = Path(tokenizer_json_path)
    if not tok.is_file():
        raise CheckpointError("tokenizer file not found", argument="tokenizer_json_path", value=str(tok),
                              fix="pass the tokenizer.json the model was trained with")
    try:
        meta_text = json.dumps(meta or {}, indent=2, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise BadRequestError(f"meta is not JSON-serialisable ({exc})", argument="meta", value=type(meta).__name__,
                              fix="use only str, int, float, bool, None, lists and dicts in meta") from exc
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    plan = shard_plan(tensors, shard_bytes) if shard_bytes > 0 else None
    file_meta = {"format": "pt"}
    mods = lora_modules(model)
    if mods:
        first = next(iter(mods.values()))
        file_meta.update(lora_rank=str(first.rank), lora_alpha=str(first.alpha),
                         lora_targets=json.dumps(sorted({n.split(".", 2)[2] for n in mods})))
    with atomic_folder(dir) as tmp:
        if plan is None:
            save_safetensors(tensors, tmp / WEIGHTS, metadata=file_meta)
        else:
            for i, names in enumerate(plan, 1):
                path = tmp / SHARD_NAME.format(index=i, count=len(plan))
                save_safetensors({k: tensors[k] for k in names}, path, metadata=file_meta)
                if path.stat().st_size > shard_bytes:    # the header outgrew its room: never silently
                    raise CheckpointError("a weights part exceeds its size limit", argument="shard_bytes",
                                          value=shard_bytes, fix="use a larger part size")
        (tmp / CONFIG).write_text(json.dumps(model.cfg.to_dict(), indent=2, sort_keys=True))
        shutil.copyfile(tok, tmp / TOKENIZER)
        (tmp / META).write_text(meta_text)
    return dir


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint lacks {path.name}", argument="dir", value=str(path.parent),
                              fix=f"a checkpoint folder holds {WEIGHTS}, {CONFIG}, {TOKENIZER}, {META}; "
                                  "write it with save_checkpoint")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{what} is not valid JSON ({exc})", argument="dir", value=str(path),
                              fix="restore the file or save the checkpoint again") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} must be a JSON object", argument="dir", value=str(path),
                              fix="restore the file or save the checkpoint again")
    return data


def read_checkpoint_info(dir: str | Path) -> tuple[ModelConfig, dict]:
    """``(model config, meta)`` of a folder written by :func:`save_checkpoint`, without reading its weights
    (what a resumed run or a depth-grown one needs of the checkpoint it started from)."""
    dir = Path(dir)
    if not dir.is_dir():
        raise CheckpointError("checkpoint folder not found", argument="dir", value=str(dir),
                              fix="pass the folder written by save_checkpoint / `midirwkv train`")
    try:
        cfg = ModelConfig.from_dict(_read_json(dir / CONFIG, CONFIG))
    except MidiRwkvError as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"config.json does not describe a model ({exc})", argument="dir", value=str(dir),
                              fix="restore config.json or save the checkpoint again") from exc
    return cfg, _read_json(dir / META, META)


def load_checkpoint(dir: str | Path, device: str | torch.device = "cpu") -> tuple[RWKV7, Path, dict]:
    """Load a folder written by :func:`save_checkpoint` -> ``(model, tokenizer_json_path, meta)``.

    The model comes back in eval mode; LoRA layers and learned start states are restored when present. Split
    weights (:data:`SHARD_NAME` files) are joined.
    """
    dir = Path(dir)
    cfg, meta = read_checkpoint_info(dir)
    tok = dir / TOKENIZER
    if not tok.is_file():
        raise CheckpointError(f"checkpoint lacks {TOKENIZER}", argument="dir", value=str(dir),
                              fix="copy the tokenizer the model was trained with into the folder")
    tensors, file_meta = read_weights(dir, device)
    wpath = weight_files(dir)[0]
    model = RWKV7(cfg)
    if "lora_rank" in file_meta:
        apply_lora(model, int(file_meta["lora_rank"]), float(file_meta["lora_alpha"]),
                   json.loads(file_meta["lora_targets"]), freeze=False)
    if any(k.endswith(".time_state") for k in tensors):
        model.enable_state_tuning(freeze=False)
    load_weights(model, tensors, source=str(wpath))
    return model.to(device).eval(), tok, meta


def weight_files(dir: str | Path) -> list[Path]:
    """The weight files of checkpoint folder ``dir``: ``[model.safetensors]``, or every part of split weights in
    order (:data:`SHARD_NAME`); a missing or incomplete set is a :class:`CheckpointError`."""
    dir = Path(dir)
    single = dir / WEIGHTS
    parts = sorted(p for p in dir.glob("model-*-of-*.safetensors") if _SHARD_RE.match(p.name)) if dir.is_dir() else []
    if single.is_file():
        if parts:
            raise CheckpointError(f"checkpoint holds both {WEIGHTS} and split weights", argument="dir",
                                  value=str(dir), fix="keep one of them (they may be different models)")
        return [single]
    if not parts:
        raise CheckpointError(f"checkpoint lacks {WEIGHTS}", argument="dir", value=str(dir),
                              fix="save the checkpoint again with save_checkpoint")
    counts = {int(_SHARD_RE.match(p.name).group(2)) for p in parts}  # type: ignore[union-attr]
    indices = [int(_SHARD_RE.match(p.name).group(1)) for p in parts]  # type: ignore[union-attr]
    if len(counts) != 1 or indices != list(range(1, len(parts) + 1)) or counts != {len(parts)}:
        raise CheckpointError("the split weights are incomplete", argument="dir",
                              value=[p.name for p in parts], fix="copy every model-NNNN-of-NNNN.safetensors file "
                                                                 "of the checkpoint into the folder")
    return parts


def read_weights(dir: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(tensors, safetensors metadata)`` of checkpoint folder ``dir``, split weights joined (in their stored
    dtype: bit for bit what was saved)."""
    from safetensors import safe_open

    tensors: dict[str, Tensor] = {}
    file_meta: dict[str, str] = {}
    for path in weight_files(dir):
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                file_meta = f.metadata() or {}
                for k in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                    if k in tensors:
                        raise CheckpointError(f"tensor {k} is in two weight files", argument="dir", value=str(path),
                                              fix="save the checkpoint again with save_checkpoint")
                    tensors[k] = f.get_tensor(k)
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises several exception types on damaged files
            raise CheckpointError(f"{path.name} is unreadable ({exc})", argument="dir", value=str(path),
                                  fix="the file is damaged or truncated; restore it or save the checkpoint "
                                      "again") from exc
    return tensors, file_meta


def join_weights(dir: str | Path, path: str | Path) -> Path:
    """Write the weights of checkpoint folder ``dir`` (split or not) as one safetensors file ``path``."""
    tensors, file_meta = read_weights(dir)
    save_safetensors(tensors, path, metadata=file_meta)
    return Path(path)


def weights_bytes(dir: str | Path) -> int:
    """Bytes of the weight files of checkpoint folder ``dir`` (all parts together)."""
    return sum(p.stat().st_size for p in weight_files(dir))


def load_weights(model: RWKV7, tensors: dict[str, Tensor], source: str = "state_dict") -> None:
    """Copy ``tensors`` into ``model`` after checking names and shapes (one error listing every problem)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(f"shape mismatch {wrong[:5]}{' ...' if len(wrong) > 5 else ''}")
        raise CheckpointError("weights do not fit the model config: " + "; ".join(parts), argument="weights",
                              value=source, fix="load the weights with the config.json they were saved with")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})


def grown_layer_sources(n_old: int, n_new: int) -> list[tuple[int, bool]]:
    """For each layer of a model grown from ``n_old`` to ``n_new`` layers: (old layer it copies, is a new copy).

    The old layers keep their order; the new copies are spread evenly over old layers ``1 .. n_old - 1``
    (never layer 0, which alone holds ``ln0`` and makes the value-residual ``v_first``), each placed right after
    the layer it copies. E.g. 4 -> 6: ``[0, 1, 1*, 2, 2*, 3]``.
    """
    if not (isinstance(n_old, int) and isinstance(n_new, int) and 2 <= n_old <= n_new):
        raise BadRequestError("a model grows from 2 or more layers to at least as many", argument="n_layer",
                              value=(n_old, n_new), fix="use n_new >= n_old >= 2")
    extra = n_new - n_old
    copies = [0] * n_old
    for k in range(extra):          # spread evenly over layers 1 .. n_old - 1
        copies[1 + (k * (n_old - 1)) // extra if extra <= n_old - 1 else 1 + k % (n_old - 1)] += 1
    out: list[tuple[int, bool]] = []
    for j in range(n_old):
        out.append((j, False))
        out += [(j, True)] * copies[j]
    return out


def grow_depth(tensors: dict[str, Tensor], n_old: int, n_new: int) -> dict[str, Tensor]:
    """Weights of an ``n_old``-layer RWKV-7 grown to ``n_new`` layers computing the SAME function at first.

    Each new layer (see :func:`grown_layer_sources`) copies its source layer with the two matrices that write
    into the residual stream (``att.output`` and ``ffn.value``) set to zero, so it adds nothing until training
    moves them: a continued run starts from the old model's loss, not from a disturbed one. Everything outside
    the blocks (embedding, ``ln_out``, head) is shared unchanged.
    """
    out = {k: v for k, v in tensors.items() if not k.startswith("blocks.")}
    for i, (j, fresh) in enumerate(grown_layer_sources(n_old, n_new)):
        prefix = f"blocks.{j}."
        for k, v in tensors.items():
            if k.startswith(prefix):
                rest = k[len(prefix):]
                value = v.clone()
                if fresh and rest in ("att.output.weight", "ffn.value.weight"):
                    value.zero_()
                out[f"blocks.{i}.{rest}"] = value
    return out


# ------------------------------------------------------------------------------------------- RWKV-LM .pth

def _layer_count(sd: dict[str, Tensor]) -> int:
    layers = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    return max(layers) + 1 if layers else 0


def import_rwkv_pth(path: str | Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Read an RWKV-LM x070 ``.pth`` (weights only) -> ``(ModelConfig, state_dict)`` shaped for :class:`RWKV7`.

    The config comes from tensor shapes; vectors saved squeezed (as the ``rwkv`` package does) are reshaped.
    Official checkpoints in bf16/fp16 are converted to float32.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("RWKV .pth file not found", argument="path", value=str(path),
                              fix="pass the path of an RWKV-LM x070 checkpoint, including .pth")
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many exception types on bad or non-weight files
        raise CheckpointError(f"cannot read {path.name} as a weights-only torch file ({exc})", argument="path",
                              value=str(path), fix="pass a plain tensor dict saved with torch.save") from exc
    if not isinstance(sd, dict) or "emb.weight" not in sd or "blocks.0.att.r_k" not in sd:
        raise CheckpointError("not an RWKV-7 x070 checkpoint (no emb.weight / blocks.0.att.r_k)", argument="path",
                              value=str(path), fix="pass an RWKV-LM RWKV-7 checkpoint")
    vocab, n_embd = sd["emb.weight"].shape
    _n_head, head_size = sd["blocks.0.att.r_k"].shape
    lora_src = 1 if "blocks.1.att.v1" in sd else 0
    mv = sd.get(f"blocks.{lora_src}.att.v1")
    cfg = ModelConfig(
        vocab_size=int(vocab), n_layer=_layer_count(sd), n_embd=int(n_embd), head_size=int(head_size),
        dim_ffn=int(sd["blocks.0.ffn.key.weight"].shape[0]),
        decay_lora=int(sd["blocks.0.att.w1"].shape[1]), aaa_lora=int(sd["blocks.0.att.a1"].shape[1]),
        mv_lora=int(mv.shape[1]) if mv is not None else ModelConfig.mv_lora,
        gate_lora=int(sd["blocks.0.att.g1"].shape[1]),
    )
    if cfg.dim_ffn == 4 * cfg.n_embd:
        cfg = ModelConfig(**{**cfg.to_dict(), "dim_ffn": 0})
    shapes = {k: v.shape for k, v in RWKV7(cfg).state_dict().items()}
    out = {}
    for k, shape in shapes.items():
        if k not in sd:
            if k.startswith("blocks.0.att.v"):      # layer 0 never uses its value-residual weights
                out[k] = torch.zeros(shape)
                continue
            raise CheckpointError(f"checkpoint lacks {k}", argument="path", value=str(path),
                                  fix="pass a complete RWKV-LM x070 checkpoint")
        t = sd[k]
        if t.numel() != math.prod(shape):
            raise CheckpointError(f"{k} has shape {tuple(t.shape)}, expected {tuple(shape)}", argument="path",
                                  value=str(path), fix="the checkpoint is not a standard x070 model")
        out[k] = t.float().reshape(shape).contiguous()
    return cfg, out


def model_from_rwkv_pth(path: str | Path) -> RWKV7:
    """Build an :class:`RWKV7` from an RWKV-LM ``.pth`` (eval mode)."""
    cfg, sd = import_rwkv_pth(path)
    model = RWKV7(cfg)
    load_weights(model, sd, source=str(path))
    return model.eval()


@torch.no_grad()
def export_rwkv_pth(model: RWKV7, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` as an RWKV-LM x070 ``.pth`` (plain tensor dict, RWKV-LM shapes) for the official tools.

    LoRA updates are merged into the exported weights (the model itself is unchanged); learned start
    states are not part of an RWKV-LM checkpoint and are left out (save them with ``save_adapter``).
    """
    sd = model.state_dict()
    if lora_modules(model):
        import copy

        merged = merge_lora(copy.deepcopy(model))
        sd = merged.state_dict()
    out = {k: v.detach().to("cpu", dtype).contiguous() for k, v in sd.items() if not k.endswith(".time_state")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(out, str(tmp))
    tmp.replace(path)
    return path
