"""Helpers shared by the model tests (import as ``from model_helpers import ...``; pytest puts tests/ on the path)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

from midirwkv.config import ModelConfig
from midirwkv.model import RWKV7

POP909_SONG = Path(__file__).parent / "fixtures" / "corpus" / "pop909" / "002.mid"
"""A real multi-track song (melody, bridge, piano) that the infill tests edit."""


def benchmark_module(name: str) -> Iterator[ModuleType]:
    """``benchmarks/<name>.py`` imported as ``<name>_bench``, registered in ``sys.modules`` while in use (its
    dataclasses look their module up while being defined); a module fixture's body: ``yield from``."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def song_copy(tmp_path: Path, source: Path = POP909_SONG) -> Path:
    """A writable copy of the fixture ``source`` as ``tmp_path/song.mid`` (tests never write beside the fixtures)."""
    path = tmp_path / "song.mid"
    shutil.copy(source, path)
    return path


def perturbed_model(cfg: ModelConfig, seed: int = 0) -> RWKV7:
    """An RWKV7 of ``cfg`` in eval mode with every weight perturbed by N(0, 0.1): the RWKV-LM init zeroes some
    projections, which would hide errors in the paths they feed."""
    torch.manual_seed(seed)
    model = RWKV7(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def tiny_engine():
    """A 2-layer random-weight engine with the shipped tokenizer, in memory (the infer and CLI tests' model)."""
    from midirwkv.infer import api
    from midirwkv.music.vocab import Vocab

    vocab = Vocab.load()
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab.size, n_layer=2, n_embd=64, head_size=32, dim_ffn=128, decay_lora=8,
                      aaa_lora=8, mv_lora=8, gate_lora=8)
    return api.Engine(model=RWKV7(cfg).eval(), vocab=vocab)
