"""Style files at inference: read, check, blend and export learned initial states; apply LoRA style adapters.

A style file (``style.safetensors``, written by ``midirwkv.train.style.tune_state``) holds one tensor per
layer, ``blocks.N.att.time_state`` of shape ``(H, N, N)`` in ``[head, value, key]`` order: the same names
and layout as RWKV-PEFT's state tuning, so the export to RWKV-PEFT / rwkv.cpp is a plain key copy. Its
safetensors metadata records what it was made for::

    kind              "midirwkv-style"
    format            "1"
    model_shape_hash  sha1 of the ModelConfig          (checked: another shape is an error)
    tokenizer_hash    sha1 of the id -> name table      (checked: another tokenizer is an error)
    weights_hash      sha1 of the base weights          (checked unless check_weights=False)
    model_config, songs, settings, losses, created, elapsed_s   (JSON strings, informative)

``style`` arguments (the API's ``infill(style=...)``, the CLI's ``--style FILE[:WEIGHT]``) are one path, or a
list of ``(path, weight)`` pairs whose weights are >= 0 and sum to 1: the initial WKV state is then the
weighted sum of the files' states (a convex blend). A LoRA adapter file (``tune_lora``) may be given alone:
the model is then a copy with the adapter merged into its weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from midirwkv.errors import BadRequestError, CheckpointError
from midirwkv.files import atomic_path, save_safetensors

STYLE_KIND = "midirwkv-style"
"""``kind`` metadata of a style (learned state) file."""
STYLE_FORMAT = "1"
"""Version of the style file layout."""
ADAPTER_KIND = "midirwkv-adapter"
"""``kind`` metadata of a LoRA adapter file (``model.lora.save_adapter``)."""
STATE_KEY = "blocks.{}.att.time_state"
"""Tensor name of layer i's learned state (RWKV-PEFT's name)."""
WEIGHT_TOLERANCE = 1e-6
"""Blend weights must sum to 1 within this."""

StyleSpec = str | Path | Sequence[tuple[str | Path, float]] | None


# ----------------------------------------------------------------------------------------------- identity

def model_shape_hash(model) -> str:
    """sha1 of the model's ``ModelConfig`` (what a state's shape and meaning depend on)."""
    return hashlib.sha1(json.dumps(model.cfg.to_dict(), sort_keys=True).encode()).hexdigest()


def tokenizer_hash(vocab) -> str:
    """sha1 of the vocabulary's id -> name table."""
    from midirwkv.data.corpora import vocab_hash

    return vocab_hash(vocab)


_WEIGHT_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weights_hash(model, cache: bool = True) -> str:
    """sha1 of the base weights (LoRA matrices and learned states left out, LoRA layers read unmerged).

    With ``cache`` the hash of a model object is computed once (inference models do not change).
    """
    if cache and model in _WEIGHT_HASHES:
        return _WEIGHT_HASHES[model]
    h = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        if name.endswith((".lora_A", ".lora_B", ".time_state")):
            continue
        h.update(name.encode() + b"\0")
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest = h.hexdigest()
    if cache:
        _WEIGHT_HASHES[model] = digest
    return digest


def identity(model, vocab) -> dict[str, str]:
    """The metadata that ties a style file to one model and tokenizer."""
    return {"model_shape_hash": model_shape_hash(model), "tokenizer_hash": tokenizer_hash(vocab),
            "weights_hash": weights_hash(model, cache=False),
            "model_config": json.dumps(model.cfg.to_dict(), sort_keys=True)}


# ----------------------------------------------------------------------------------------------- files

@dataclass
class StyleFile:
    """One read style file: the learned state ``(L, H, N, N)`` and its decoded metadata."""

    path: Path
    state: Tensor
    meta: dict = field(default_factory=dict)


def _atomic_save(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_safetensors({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    return path


def _json_meta(meta: dict) -> dict[str, str]:
    """Metadata values as JSON strings; ``json_keys`` lists them so reading decodes exactly those."""
    out = {key: json.dumps(value, sort_keys=True, default=str) for key, value in meta.items()}
    out["json_keys"] = json.dumps(sorted(meta) + ["model_config"])
    return out


def save_style(path: str | Path, state: Tensor, model, vocab, meta: dict | None = None) -> Path:
    """Write the learned state ``(L, H, N, N)`` of ``model`` to ``path`` atomically, with identity metadata.

    ``meta`` values (songs, settings, losses ...) are stored as JSON strings.
    """
    cfg = model.cfg
    want = (cfg.n_layer, cfg.n_head, cfg.head_size, cfg.head_size)
    if tuple(state.shape) != want:
        raise BadRequestError("the state does not fit the model", argument="state", value=tuple(state.shape),
                              fix=f"pass a tensor of shape {want} (layers, heads, value, key)")
    tensors = {STATE_KEY.format(i): state[i].float() for i in range(cfg.n_layer)}
    metadata = {"kind": STYLE_KIND, "format": STYLE_FORMAT, **identity(model, vocab), **_json_meta(meta or {})}
    return _atomic_save(tensors, Path(path), metadata)


def _read_safetensors(path: Path, what: str) -> tuple[dict[str, str], dict[str, Tensor]]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{what} not found", argument="style", value=str(path),
                              fix="pass the .safetensors file written by `midirwkv tune-state` / `tune-lora`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as exc:  # safetensors raises several exception types on damaged files
        raise CheckpointError(f"{what} is unreadable ({str(exc)[:120]})", argument="style", value=str(path),
                              fix="the file is damaged or not a safetensors file; tune the style again") from exc
    return meta, tensors


def _decode_meta(meta: dict[str, str]) -> dict:
    try:
        json_keys = set(json.loads(meta.get("json_keys", "[]")))
        return {k: json.loads(v) if k in json_keys else v for k, v in meta.items() if k != "json_keys"}
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"style file metadata is damaged ({exc})", argument="style", value=meta.get("kind"),
                              fix="tune the style again") from exc


def read_style(path: str | Path) -> StyleFile:
    """Read a style file (no model check; see :func:`check_style`)."""
    path = Path(path)
    meta, tensors = _read_safetensors(path, "style file")
    if meta.get("kind") != STYLE_KIND:
        hint = ("it is a LoRA adapter: pass it alone as the style, or load it with model.lora.load_adapter"
                if meta.get("kind") == ADAPTER_KIND else "pass a file written by `midirwkv tune-state`")
        raise CheckpointError("not a midirwkv style file", argument="style", value=str(path), fix=hint)
    n_layer = len(tensors)
    keys = [STATE_KEY.format(i) for i in range(n_layer)]
    if sorted(keys) != sorted(tensors):
        raise CheckpointError("style file tensors are not blocks.0..L-1.att.time_state", argument="style",
                              value=sorted(tensors)[:4], fix="tune the style again with `midirwkv tune-state`")
    state = torch.stack([tensors[k].float() for k in keys])                # (L, H, N, N)
    return StyleFile(path=path, state=state, meta=_decode_meta(meta))


def check_style(sf: StyleFile, model, vocab, check_weights: bool = True) -> None:
    """Raise ``CheckpointError`` unless ``sf`` was tuned for this model shape, tokenizer (and weights)."""
    cfg = model.cfg
    want = (cfg.n_layer, cfg.n_head, cfg.head_size, cfg.head_size)
    if sf.meta.get("model_shape_hash") != model_shape_hash(model) or tuple(sf.state.shape) != want:
        raise CheckpointError(
            f"style file was tuned for another model shape (its state is {tuple(sf.state.shape)}, "
            f"this model needs {want}; tuned for {sf.meta.get('model_config')})", argument="style",
            value=str(sf.path), fix="tune the style again on this model with `midirwkv tune-state --model DIR`")
    if sf.meta.get("tokenizer_hash") != tokenizer_hash(vocab):
        raise CheckpointError("style file was tuned with another tokenizer", argument="style", value=str(sf.path),
                              fix="use the model (and tokenizer) the style was tuned on, or tune it again")
    if check_weights and sf.meta.get("weights_hash") != weights_hash(model):
        raise CheckpointError("style file was tuned on other weights of the same shape", argument="style",
                              value=str(sf.path),
                              fix="tune the style again on this model (a state only means something to the weights "
                                  "it was learned with), or pass check_weights=False to use it anyway")


# ----------------------------------------------------------------------------------------------- blends

def parse_style(style: StyleSpec) -> list[tuple[Path, float]]:
    """Normalise a ``style`` argument to ``[(path, weight), ...]``; ``[]`` for None.

    One path means weight 1. A list holds ``(path, weight)`` pairs (or bare paths when it has one entry).
    Weights must be finite, >= 0 and sum to 1.
    """
    if style is None:
        return []
    if isinstance(style, (str, Path)):
        return [(Path(style), 1.0)]
    if not isinstance(style, Sequence) or not style:
        raise BadRequestError("style must be a path or a non-empty list of (path, weight)", argument="style",
                              value=style, fix="pass 'style.safetensors' or [('a.safetensors', 0.7), "
                                               "('b.safetensors', 0.3)]")
    pairs = []
    for item in style:
        if isinstance(item, (str, Path)) and len(style) == 1:
            pairs.append((Path(item), 1.0))
            continue
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (str, Path))):
            raise BadRequestError("each style entry must be (path, weight)", argument="style", value=item,
                                  fix="pass e.g. [('a.safetensors', 0.7), ('b.safetensors', 0.3)]")
        try:
            weight = float(item[1])
        except (TypeError, ValueError):
            raise BadRequestError("style weight is not a number", argument="style", value=item,
                                  fix="give each style a weight in [0, 1]") from None
        pairs.append((Path(item[0]), weight))
    weights = [w for _, w in pairs]
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise BadRequestError("style weights must be >= 0", argument="style", value=weights,
                              fix="give each style a weight in [0, 1], the weights summing to 1")
    if abs(sum(weights) - 1.0) > WEIGHT_TOLERANCE:
        raise BadRequestError(f"style weights must sum to 1 (they sum to {sum(weights):.6g})", argument="style",
                              value=weights, fix="e.g. --style a.safetensors:0.7 --style b.safetensors:0.3")
    return pairs


def parse_style_args(values: Sequence[str] | None) -> list[tuple[str, float]] | None:
    """The CLI's repeatable ``--style FILE[:WEIGHT]`` -> a ``style`` argument (None when not given).

    A single ``--style FILE`` has weight 1; with several, every entry needs its weight.
    """
    if not values:
        return None
    pairs: list[tuple[str, float]] = []
    for text in values:
        path, sep, tail = str(text).rpartition(":")
        weight: float | None = None
        if sep and path:
            try:
                weight = float(tail)
            except ValueError:
                path = str(text)
        else:
            path = str(text)
        if weight is None:
            if len(values) > 1:
                raise BadRequestError("with several --style options every one needs a weight", argument="--style",
                                      value=list(values), fix="write FILE:WEIGHT, e.g. --style a.safetensors:0.7 "
                                                               "--style b.safetensors:0.3")
            weight = 1.0
        pairs.append((path, weight))
    parse_style(pairs)          # validates the weights now, with the CLI's argument name in the message
    return pairs


def blend_states(states: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """The convex combination ``sum_i weights[i] * states[i]`` of same-shaped states."""
    if len(states) != len(weights) or not states:
        raise BadRequestError("need one weight per state", argument="weights", value=(len(states), len(weights)),
                              fix="pass as many weights as states")
    out = torch.zeros_like(states[0], dtype=torch.float32)
    for s, w in zip(states, weights):
        if s.shape != states[0].shape:
            raise BadRequestError("states to blend have different shapes", argument="style",
                                  value=[tuple(t.shape) for t in states], fix="blend styles of one model")
        out = out + float(w) * s.float()
    return out


def _file_kind(path: Path) -> str:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError("style file not found", argument="style", value=str(path),
                              fix="pass the .safetensors file written by `midirwkv tune-state` / `tune-lora`")
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("kind", "")
    except Exception as exc:  # safetensors raises several exception types on damaged files
        raise CheckpointError(f"style file is unreadable ({str(exc)[:120]})", argument="style", value=str(path),
                              fix="the file is damaged or not a safetensors file; tune the style again") from exc


def style_state(model, vocab, style: StyleSpec, check_weights: bool = True):
    """The batch-1 ``State`` to start from: the model's ``init_state(1)`` with the (blended) learned WKV state.

    Returns None when ``style`` is None.
    """
    pairs = parse_style(style)
    if not pairs:
        return None
    files = [read_style(path) for path, _ in pairs]
    for sf in files:
        check_style(sf, model, vocab, check_weights)
    state = model.init_state(1)
    blended = blend_states([sf.state for sf in files], [w for _, w in pairs])
    state.wkv = blended.unsqueeze(1).to(state.wkv.device).clone()          # (L, 1, H, N, N)
    return state


_MERGED: dict[tuple, object] = {}


def _adapter_model(model, vocab, path: Path, check_weights: bool):
    """A copy of ``model`` with the LoRA adapter at ``path`` merged in (cached per model and file version)."""
    from midirwkv.model.lora import load_adapter, merge_lora

    stat = path.stat()
    key = (id(model), str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _MERGED:
        return _MERGED[key]
    meta, _ = _read_safetensors(path, "LoRA adapter")
    if "model_shape_hash" in meta and meta["model_shape_hash"] != model_shape_hash(model):
        raise CheckpointError("LoRA adapter was trained for another model shape", argument="style", value=str(path),
                              fix="train it again on this model with `midirwkv tune-lora --model DIR`")
    if "tokenizer_hash" in meta and meta["tokenizer_hash"] != tokenizer_hash(vocab):
        raise CheckpointError("LoRA adapter was trained with another tokenizer", argument="style", value=str(path),
                              fix="use the model (and tokenizer) it was trained on, or train it again")
    if check_weights and "weights_hash" in meta and meta["weights_hash"] != weights_hash(model):
        raise CheckpointError("LoRA adapter was trained on other weights of the same shape", argument="style",
                              value=str(path), fix="train it again on this model, or pass check_weights=False")
    merged = copy.deepcopy(model)
    load_adapter(merged, path, freeze=True)
    merge_lora(merged)
    merged.eval()
    _MERGED.clear()                     # keep one merged copy: models are large, styles change rarely
    _MERGED[key] = merged
    return merged


def resolve_style(model, vocab, style: StyleSpec, check_weights: bool = True):
    """``(model to run, initial State or None)`` for a ``style`` argument (see the module docstring)."""
    pairs = parse_style(style)
    if not pairs:
        return model, None
    kinds = [_file_kind(path) for path, _ in pairs]
    if ADAPTER_KIND in kinds:
        if len(pairs) > 1:
            raise BadRequestError("a LoRA adapter cannot be blended", argument="style",
                                  value=[str(p) for p, _ in pairs],
                                  fix="pass a LoRA adapter alone, or blend state files (`midirwkv tune-state`)")
        return _adapter_model(model, vocab, pairs[0][0], check_weights), None
    return model, style_state(model, vocab, pairs, check_weights)


# ----------------------------------------------------------------------------------------------- export

def export_state(style: str | Path, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write a style file's state in the layout RWKV-PEFT and rwkv.cpp read (atomically).

    Keys ``blocks.N.att.time_state``, each ``(H, N, N)`` = ``[head, value, key]``. ``out`` ending in ``.pth``
    gives a plain ``torch.save`` tensor dict (RWKV-PEFT's state checkpoint, merged into a base ``.pth`` by
    key copy); ``.safetensors`` gives the same tensors as safetensors.
    """
    sf = read_style(style)
    out = Path(out)
    tensors = {STATE_KEY.format(i): sf.state[i].to(dtype).contiguous() for i in range(sf.state.shape[0])}
    suffix = out.suffix.lower()
    if suffix == ".safetensors":
        return _atomic_save(tensors, out, {"format": "pt"})
    if suffix != ".pth":
        raise BadRequestError("export file must end in .pth or .safetensors", argument="out", value=str(out),
                              fix="e.g. state.pth (RWKV-PEFT / rwkv.cpp) or state.safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save(tensors, tmp)
    return out
