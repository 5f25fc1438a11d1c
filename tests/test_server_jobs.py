"""The job state a reader can see: the last variations and "done" appear in one step (issue 14, item 6).

The page enables "Accept" as soon as a variation is listed; it used to see every variation while the job
still said "running" (the last batch was published, saved, and only then marked done), which made the browser
test flaky on a busy machine. Every state a reader can see is recorded here: each ``job.json`` write, and the
live record at that moment.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from midirwkv.server.app import create_app
from midirwkv.server.jobs import GEN_CHUNK

SONG = Path(__file__).parent / "fixtures" / "pop909" / "318.mid"


@pytest.fixture
def recorded(tmp_path, tiny_model_dir):
    """(client, states): every job state written to disk or live while a job runs, in order."""
    app = create_app(tmp_path / "data", tiny_model_dir, threads=1)
    storage, jobs = app.state.storage, app.state.jobs
    states: list[tuple[str, str, int, float]] = []
    write_json = storage.write_json

    def spy(path, data):
        write_json(path, data)
        if path.name == "job.json" and "variations" in data:
            states.append(("disk", data["status"], len(data["variations"]), data["progress"]))
            with jobs._lock:
                for live in jobs._live.values():
                    states.append(("live", live["status"], len(live["variations"]), live["progress"]))

    storage.write_json = spy
    with TestClient(app, base_url="http://127.0.0.1") as c:
        c.headers["X-Midirwkv-Session"] = c.post("/api/session").json()["session"]
        yield c, states


def run(c: TestClient, variations: int) -> dict:
    uid = c.post("/api/uploads?filename=s.mid", content=SONG.read_bytes(),
                 headers={"Content-Type": "audio/midi"}).json()["upload_id"]
    body = {"track": 0, "first_bar": 5, "last_bar": 6, "context_bars": 2, "seed": 3, "variations": variations,
            "sampling": {"max_notes_per_bar": 4}}
    job = c.post(f"/api/uploads/{uid}/infill", json=body).json()
    seen = []
    end = time.time() + 120
    while job["status"] not in ("done", "failed", "cancelled"):
        assert time.time() < end, job
        job = c.get(f"/api/uploads/{uid}/jobs/{job['job_id']}").json()
        seen.append((job["status"], len(job["variations"])))
    assert job["status"] == "done", job
    assert all(status == "done" or n < variations for status, n in seen), seen
    return job


@pytest.mark.parametrize("variations", [2, GEN_CHUNK + 2])
def test_the_last_variations_and_done_appear_together(recorded, variations):
    c, states = recorded
    job = run(c, variations)
    assert len(job["variations"]) == variations and job["progress"] == 1.0
    assert [s for s in states if s[0] == "disk"][-1] == ("disk", "done", variations, 1.0)
    for where, status, n, progress in states:
        if status != "done":
            assert n < variations and progress < 1.0, states     # never every variation while running
        else:
            assert n == variations and progress == 1.0, states
    if variations > GEN_CHUNK:
        # a job of several batches still shows its first batch while the rest is sampled
        assert ("disk", "running", GEN_CHUNK) in {(w, s, n) for w, s, n, _ in states}, states
