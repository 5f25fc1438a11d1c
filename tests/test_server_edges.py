"""The HTTP API at the edges: spans up to the last bar, held notes, emptied tracks and oversized files."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
import symusic
from fastapi.testclient import TestClient
from server_helpers import wait

from midirwkv.music.remi import ScoreLimits
from midirwkv.server.app import create_app

FAST = {"max_notes_per_bar": 4}


@pytest.fixture
def client(tmp_path, tiny_model_dir, monkeypatch):
    for var in ScoreLimits.ENV.values():
        monkeypatch.delenv(var, raising=False)
    app = create_app(tmp_path / "data", tiny_model_dir, threads=1)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        c.headers["X-Midirwkv-Session"] = c.post("/api/session").json()["session"]
        yield c


def midi(notes: list[tuple[int, int]], tpq: int = 480) -> bytes:
    score = symusic.Score(tpq)
    track = symusic.Track("piano", 0, False)
    for t, d in notes:
        track.notes.append(symusic.Note(t, d, 60, 90))
    score.tracks.append(track)
    return score.dumps_midi()


EIGHT_BARS = midi([(b * 1920, 480) for b in range(8)])
HELD = midi([(0, 8 * 1920)])


def upload(c: TestClient, data: bytes, name: str = "song.mid"):
    return c.post(f"/api/uploads?filename={name}", content=data, headers={"Content-Type": "audio/midi"})




@pytest.mark.parametrize("data,first,last,controls", [
    (EIGHT_BARS, 7, 8, [{"density": 0}, {"density": 0}]),     # the last bars, emptied
    (EIGHT_BARS, 1, 8, [{"density": 0}] * 8),                 # an empty result
    (HELD, 1, 4, None),                                       # a note held over 8 bars
], ids=["last_bars", "empty_result", "held_note"])
def test_infill_up_to_the_end_reports_every_bar(client, data, first, last, controls):
    uid = upload(client, data).json()["upload_id"]
    body = {"track": 0, "first_bar": first, "last_bar": last, "context_bars": 2, "seed": 1, "variations": 2,
            "sampling": FAST, "controls": controls}
    r = client.post(f"/api/uploads/{uid}/infill", json=body)
    assert r.status_code == 202, r.text
    job = wait(client, uid, r.json())
    assert job["status"] == "done", job
    for var in job["variations"]:
        assert [b["bar"] for b in var["bars"]] == list(range(first, last + 1))
        if controls is not None:
            assert all(b["achieved"]["density"] == 0 and "density" not in b["missed"] for b in var["bars"])


def test_oversized_uploads_are_refused_with_the_limit(client):
    r = upload(client, midi([(0, 1), (2**28, 1)], tpq=1), "bomb.mid")
    assert r.status_code == 413, r.text
    body = r.json()
    assert body["error"] == "LimitError" and body["argument"] == "max_bars" and "MIDIRWKV_MAX_BARS" in body["fix"]
    assert client.get("/api/uploads").json() == []
    assert client.get("/api/health").status_code == 200


def test_add_track_refuses_to_empty_the_only_track(client):
    uid = upload(client, EIGHT_BARS).json()["upload_id"]
    r = client.post(f"/api/uploads/{uid}/add-track",
                    json={"regenerate": 0, "seed": 1, "sampling": FAST, "controls": {"density_max": 0}})
    assert r.status_code == 400 and r.json()["argument"] == "density", r.text
