"""``POST /api/oneshot/infill``: a MIDI file plus track and bars in one request (what DAW scripts call), and
the ``daw`` client's server path through it; FastAPI's test client, a tiny random-weight model."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient
from server_helpers import wait

from midirwkv.daw import client as daw_client
from midirwkv.music.remi import bar_grid, load_score
from midirwkv.server.app import create_app

FIXTURES = Path(__file__).parent / "fixtures"
SONG = FIXTURES / "pop909" / "318.mid"
LOCAL = "http://127.0.0.1"
MIDI = {"Content-Type": "audio/midi"}
FAST = {"context_bars": 2}


@pytest.fixture
def client(tmp_path, tiny_model_dir):
    app = create_app(tmp_path / "data", tiny_model_dir, threads=1)
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def oneshot(c: TestClient, data: bytes | None = None, headers: dict | None = None, **query):
    params = {"track": 0, "first_bar": 5, "last_bar": 6, **FAST, **query}
    return c.post("/api/oneshot/infill", params=params, content=SONG.read_bytes() if data is None else data,
                  headers=MIDI if headers is None else headers)


def notes_outside(data: bytes, track_name: str, lo: int, hi: int) -> list[tuple]:
    score = load_score(data)
    ticks, _ = bar_grid(score)
    track = next(t for t in score.tracks if t.name == track_name)
    return sorted((n.time, n.duration, n.pitch) for n in track.notes
                  if not ticks[lo - 1] <= n.time < ticks[hi])


def test_one_request_regenerates_only_the_bars(client):
    r = oneshot(client, variations=2, seed=4, wait=60, filename="song.mid")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["track_name"] == "MELODY" and out["session"] and out["upload_id"]
    job = out["job"]
    assert job["status"] == "done" and job["request"]["controls"] is None
    assert [v["variation"] for v in job["variations"]] == [1, 2]
    assert [b["bar"] for b in job["variations"][0]["bars"]] == [5, 6]
    headers = {"X-Midirwkv-Session": out["session"]}
    original = SONG.read_bytes()
    for v in job["variations"]:
        midi = client.get(v["midi_url"], headers=headers)
        assert midi.status_code == 200 and midi.headers["content-type"] == "audio/midi"
        assert notes_outside(midi.content, "MELODY", 5, 6) == notes_outside(original, "MELODY", 5, 6)
    # the upload is the session's like any other: listed, and the job polls there
    assert [u["filename"] for u in client.get("/api/uploads", headers=headers).json()] == ["song.mid"]
    assert client.get(f"/api/uploads/{out['upload_id']}/jobs/{job['job_id']}", headers=headers).status_code == 200
    # without the session, the song is nobody's to read
    assert client.get(job["variations"][0]["midi_url"]).status_code == 401


def test_session_reused_and_job_polled_when_not_waiting(client):
    token = client.post("/api/session").json()["session"]
    r = oneshot(client, headers=MIDI | {"X-Midirwkv-Session": token})
    assert r.status_code in (200, 202), r.text
    out = r.json()
    assert out["session"] == token
    client.headers["X-Midirwkv-Session"] = token
    done = wait(client, out["upload_id"], out["job"])
    assert done["status"] == "done"
    # an unknown token gets a new session rather than an error (a DAW script keeps no state)
    r = oneshot(client, headers=MIDI | {"X-Midirwkv-Session": "x" * 43}, wait=30)
    assert r.status_code == 200 and r.json()["session"] != "x" * 43


def test_controls_like_the_infill_command(client):
    r = oneshot(client, density=3, polyphony="1-2", durations="quarter,eighth", wait=60)
    assert r.status_code == 200, r.text
    asked = r.json()["job"]["request"]["controls"]
    assert len(asked) == 2 and all(c["density"] == 3 and (c["poly_min"], c["poly_max"]) == (1, 2) for c in asked)
    assert all(c["dur_quarter"] and c["dur_eighth"] and not c["dur_whole"] for c in asked)
    r = oneshot(client, density=2, free_controls="true", wait=60)
    asked = r.json()["job"]["request"]["controls"]
    assert [c["density"] for c in asked] == [2, 2] and all(c["poly_min"] is None for c in asked)


@pytest.mark.parametrize("query, status, argument", [
    ({"last_bar": 99}, 400, "last_bar"),
    ({"first_bar": 6, "last_bar": 5}, 400, "last_bar"),
    ({"track": 7}, 400, "track"),
    ({"polyphony": "3-9"}, 400, "polyphony"),
    ({"durations": "long"}, 400, "durations"),
    ({"variations": 0}, 422, "variations"),
    ({"wait": 9999}, 422, "wait"),
])
def test_bad_requests_are_typed_errors(client, query, status, argument):
    r = oneshot(client, **query)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message", "argument", "fix"} and argument in (body["argument"] or "")


def test_bad_bodies(client):
    assert oneshot(client, headers={"Content-Type": "text/plain"}).status_code == 415
    r = oneshot(client, data=b"")
    assert r.status_code == 422 and r.json()["error"] == "BadMidiError"
    r = oneshot(client, data=b"not a midi file")
    assert r.status_code == 422 and r.json()["argument"]
    # nothing was stored by refused requests
    token = client.post("/api/session").json()["session"]
    assert client.get("/api/uploads", headers={"X-Midirwkv-Session": token}).json() == []


def test_daw_client_uses_the_server(client, tmp_path, monkeypatch):
    """``midirwkv daw infill``'s server path end to end (the HTTP calls go to the test client)."""
    def request(url, *, data=None, headers=None, timeout=60.0):
        path = url.removeprefix("http://127.0.0.1:8000")
        r = client.post(path, content=data, headers=headers) if data is not None else client.get(path, headers=headers)
        assert r.status_code in (200, 202), r.text
        return r.content

    monkeypatch.setattr(daw_client, "_request", request)
    monkeypatch.setattr(daw_client, "server_alive", lambda url, timeout=0.5: True)
    params = daw_client.InfillParams(track=0, first_bar=5, last_bar=6, variations=2, seed=1, context=2)
    paths, where = daw_client.infill_files(SONG, tmp_path / "fill.mid", params, server="http://127.0.0.1:8000")
    assert where == "http://127.0.0.1:8000" and [p.name for p in paths] == ["fill_v1.mid", "fill_v2.mid"]
    for p in paths:
        assert notes_outside(p.read_bytes(), "MELODY", 5, 6) == notes_outside(SONG.read_bytes(), "MELODY", 5, 6)


def test_daw_client_reports_server_errors(monkeypatch):
    """A server that answers with an error is reported with its message (never silently run locally)."""
    import io
    import json
    import urllib.error

    def refuse(req, timeout=None):
        body = json.dumps({"error": "BadRequestError", "message": "bars beyond the end of the song",
                           "argument": "last_bar", "fix": "the song has bars 1-52"}).encode()
        raise urllib.error.HTTPError(getattr(req, "full_url", req), 400, "Bad Request", {}, io.BytesIO(body))

    monkeypatch.setattr(daw_client.urllib.request, "urlopen", refuse)
    params = daw_client.InfillParams(track=0, first_bar=60, last_bar=61)
    with pytest.raises(daw_client.MidiRwkvError, match="bars beyond the end of the song") as info:
        daw_client.infill_via_server("http://127.0.0.1:8000", SONG.read_bytes(), params)
    assert info.value.argument == "last_bar" and "1-52" in info.value.fix
    assert daw_client.server_alive("http://127.0.0.1:8000") is False     # an error answer is no server


def test_refused_job_leaves_no_upload(client, monkeypatch):
    from midirwkv.server.storage import ConflictError

    def full(*args, **kwargs):
        raise ConflictError("too many queued jobs", argument="queue", value=512, fix="wait, then retry")

    monkeypatch.setattr(client.app.state.jobs, "submit", full)
    token = client.post("/api/session").json()["session"]
    r = oneshot(client, headers=MIDI | {"X-Midirwkv-Session": token})
    assert r.status_code == 409 and r.json()["argument"] == "queue"
    assert client.get("/api/uploads", headers={"X-Midirwkv-Session": token}).json() == []


def test_per_bar_controls(client):
    per_bar = '[{"density": 3, "polyphony": "1-2", "durations": "quarter"}, {"density": 0}]'
    r = oneshot(client, controls=per_bar, wait=60)
    assert r.status_code == 200, r.text
    asked = r.json()["job"]["request"]["controls"]
    assert (asked[0]["density"], asked[0]["poly_min"], asked[0]["poly_max"]) == (3, 1, 2)
    assert asked[0]["dur_quarter"] is True and asked[0]["dur_half"] is False
    assert asked[1] == {"density": 0, "poly_min": None, "poly_max": None, "dur_whole": None, "dur_half": None,
                        "dur_quarter": None, "dur_eighth": None, "dur_sixteenth": None}
    for bad, argument in (("[{}]", "controls"), ("{", "controls"), ('[{"density": 30}, {}]', "controls[0]"),
                          ('[{"tempo": 1}, {}]', "controls[0]")):
        r = oneshot(client, controls=bad)
        assert r.status_code == 400 and r.json()["argument"] == argument, r.text
    r = oneshot(client, controls="[{}, {}]", density=3)
    assert r.status_code == 400 and r.json()["argument"] == "controls"


def test_listed_in_the_openapi_schema(client):
    spec = client.get("/openapi.json").json()
    route = spec["paths"]["/api/oneshot/infill"]["post"]
    assert {p["name"] for p in route["parameters"]} >= {"track", "first_bar", "last_bar", "controls", "wait"}
    assert "audio/midi" in route["requestBody"]["content"] and "OneShotOut" in spec["components"]["schemas"]
