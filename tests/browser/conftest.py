"""Fixtures of the browser tests: a tiny random-weight model folder and a real uvicorn server on loopback."""

from __future__ import annotations

import socket
import threading
import time
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
    cfg = ModelConfig(
        vocab_size=vocab.size,
        n_layer=2,
        n_embd=64,
        head_size=32,
        dim_ffn=128,
        decay_lora=8,
        aaa_lora=8,
        mv_lora=8,
        gate_lora=8,
    )
    tokenizer = Path(midirwkv.__file__).parent / "assets" / "tokenizer" / "tokenizer.json"
    save_checkpoint(folder, RWKV7(cfg).eval(), tokenizer, {"note": "random weights for tests"})
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of a live server (tiny model, fresh data folder) on a free loopback port."""
    import uvicorn

    from midirwkv.server.app import create_app

    tmp = tmp_path_factory.mktemp("browser")
    app = create_app(tmp / "data", make_tiny_model(tmp / "model"), threads=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started:
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)
