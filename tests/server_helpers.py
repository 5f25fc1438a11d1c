"""Helpers shared by the server tests (import as ``from server_helpers import ...``; pytest puts tests/ on the path)."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient


def wait(c: TestClient, uid: str, job: dict, timeout: float = 60.0) -> dict:
    """Poll a job until it is done, failed or cancelled (AssertionError after ``timeout`` seconds)."""
    end = time.time() + timeout
    while time.time() < end:
        job = c.get(f"/api/uploads/{uid}/jobs/{job['job_id']}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job did not finish: {job}")


def upload_song(c: TestClient, path: Path, filename: str | None = None) -> dict:
    """Upload a MIDI file as the page does (``audio/midi``); the upload's answer (AssertionError unless 201)."""
    r = c.post(f"/api/uploads?filename={filename or path.name}", content=path.read_bytes(),
               headers={"Content-Type": "audio/midi"})
    assert r.status_code == 201, r.text
    return r.json()
