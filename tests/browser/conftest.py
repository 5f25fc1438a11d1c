"""Fixtures of the browser tests: a tiny random-weight model folder and a real uvicorn server on loopback."""

from __future__ import annotations

import socket
import threading
import time

import pytest


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    """Base URL of a live server (tiny model, fresh data folder) on a free loopback port."""
    import uvicorn

    from midirwkv.server.app import create_app

    tmp = tmp_path_factory.mktemp("browser")
    app = create_app(tmp / "data", tiny_model_dir, threads=1)
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
