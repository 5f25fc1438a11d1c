"""Fixtures shared by the server API tests, the browser tests and the infill API tests."""

from __future__ import annotations

from pathlib import Path

import pytest


def make_tiny_model(folder: Path) -> Path:
    """A 2-layer random-weight RWKV7 checkpoint folder with the shipped tokenizer."""
    import torch

    import midirwkv
    from midirwkv.config import ModelConfig
    from midirwkv.model.checkpoint import save_checkpoint
    from midirwkv.model.rwkv7 import RWKV7
    from midirwkv.music.vocab import Vocab

    vocab = Vocab.load()
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab.size, n_layer=2, n_embd=64, head_size=32, dim_ffn=128, decay_lora=8,
                      aaa_lora=8, mv_lora=8, gate_lora=8)
    tokenizer = Path(midirwkv.__file__).parent / "assets" / "tokenizer" / "tokenizer.json"
    save_checkpoint(folder, RWKV7(cfg).eval(), tokenizer, {"note": "random weights for tests"})
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight model folder (read-only for the tests that use it)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def engine():
    """A 2-layer random-weight engine in memory (``model_helpers.tiny_engine``), one per test module."""
    from model_helpers import tiny_engine

    return tiny_engine()


@pytest.fixture
def song(tmp_path) -> Path:
    """A writable copy of the real POP909 fixture song (``model_helpers.POP909_SONG``)."""
    from model_helpers import song_copy

    return song_copy(tmp_path)
