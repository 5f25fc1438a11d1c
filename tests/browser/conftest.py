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


# ------------------------------------------------------------------------------------------------ pages

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture
def open_page(tmp_path):
    """Open a fresh headless Chromium page: ``open_page(width=1440, height=900, dpr=1)``.

    The page records uncaught errors (``pg.errors``), requests leaving the loopback server (``pg.outside``) and
    Content-Security-Policy violations (``pg.csp``); every context is closed at the end of the test.
    """
    import shutil
    from pathlib import Path

    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    p = sync_api.sync_playwright().start()
    contexts = []

    def make(width: int = 1440, height: int = 900, dpr: float = 1):
        context = p.chromium.launch_persistent_context(
            str(tmp_path / f"profile{len(contexts)}"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            accept_downloads=True,
            viewport={"width": width, "height": height},
            device_scale_factor=dpr,
        )
        contexts.append(context)
        pg = context.new_page()
        pg.errors, pg.outside, pg.csp = [], [], []
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.on("request", lambda r: None if r.url.startswith("http://127.0.0.1") else pg.outside.append(r.url))
        pg.on("console", lambda m: pg.csp.append(m.text) if "Content Security Policy" in m.text else None)
        return pg

    try:
        yield make
    finally:
        for context in contexts:
            context.close()
        p.stop()
