"""RWKV-7 model layer: the network, its recurrent state, the WKV kernels, LoRA and checkpoints."""

from midirwkv.model.checkpoint import (
    export_rwkv_pth,
    import_rwkv_pth,
    load_checkpoint,
    load_weights,
    model_from_rwkv_pth,
    save_checkpoint,
)
from midirwkv.model.lora import LoRALinear, apply_lora, load_adapter, merge_lora, save_adapter
from midirwkv.model.rwkv7 import RWKV7
from midirwkv.model.state import State
from midirwkv.model.wkv import wkv, wkv_chunked, wkv_ref, wkv_step

__all__ = [
    "RWKV7",
    "LoRALinear",
    "State",
    "apply_lora",
    "export_rwkv_pth",
    "import_rwkv_pth",
    "load_adapter",
    "load_checkpoint",
    "load_weights",
    "merge_lora",
    "model_from_rwkv_pth",
    "save_adapter",
    "save_checkpoint",
    "wkv",
    "wkv_chunked",
    "wkv_ref",
    "wkv_step",
]
