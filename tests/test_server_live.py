"""The live loop routes (server/live.py) end to end: one prompt read, a variation per call, streaming, keep/accept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient
from server_helpers import upload_song, wait

from midirwkv.server.app import create_app

FIXTURES = Path(__file__).parent / "fixtures"
SONG = FIXTURES / "pop909" / "318.mid"
FAST = {"max_notes_per_bar": 4}
LOCAL = "http://127.0.0.1"
MIDI = {"Content-Type": "audio/midi"}


@pytest.fixture
def client(tmp_path, tiny_model_dir):
    app = create_app(tmp_path / "data", tiny_model_dir, threads=1)
    with TestClient(app, base_url=LOCAL) as c:
        c.headers["X-Midirwkv-Session"] = c.post("/api/session").json()["session"]
        yield c


def upload(c: TestClient) -> str:
    return upload_song(c, SONG)["upload_id"]


def start(c: TestClient, uid: str, **kw) -> dict:
    body = {"track": 0, "first_bar": 5, "last_bar": 8, "context_bars": 2, "seed": 11, "sampling": FAST} | kw
    r = c.post(f"/api/uploads/{uid}/loops", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def events(c: TestClient, url: str) -> list[tuple[str, dict]]:
    out, kind = [], None
    with c.stream("GET", url) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((kind, json.loads(line[6:])))
    return out


def test_a_loop_reads_the_prompt_once_and_samples_a_new_variation_per_call(client):
    uid = upload(client)
    loop = start(client, uid)
    assert (loop["first_bar"], loop["last_bar"], loop["passes"], loop["seed"]) == (5, 8, 0, 11)
    assert loop["prompt_tokens"] > 0 and loop["span_ticks"][0] < loop["span_ticks"][1]
    assert loop["controls"] == loop["measured"] and len(loop["controls"]) == 4
    base = f"/api/uploads/{uid}/loops/{loop['loop_id']}"
    passes = [client.post(f"{base}/next").json() for _ in range(3)]
    assert [p["number"] for p in passes] == [1, 2, 3] and [p["seed"] for p in passes] == [11, 12, 13]
    t0, t1 = loop["span_ticks"]
    for p in passes:
        assert [b["bar"] for b in p["bars"]] == [5, 6, 7, 8]
        assert all(t0 <= n[0] < t1 and n[0] + n[1] <= t1 for n in p["notes"])
        assert 0 < p["first_bar_seconds"] <= p["seconds"] <= p["total_seconds"] and p["kept"] is None
    assert len({json.dumps(p["notes"]) for p in passes}) == 3          # three different variations
    again = client.get(base).json()
    assert again["passes"] == 3 and again["recent"] == [1, 2, 3]
    health = client.get("/api/health").json()
    assert health["prefills"] == 0                                     # loops never go through the job queue


def test_settings_changed_between_calls_apply_to_the_next_variation(client):
    uid = upload(client)
    loop = start(client, uid)
    base = f"/api/uploads/{uid}/loops/{loop['loop_id']}"
    empty = [{"density": 0}] * 4
    r = client.patch(base, json={"controls": empty, "sampling": FAST | {"temperature": 1.1}})
    assert r.status_code == 200, r.text
    assert r.json()["controls"][0]["density"] == 0 and r.json()["sampling"]["temperature"] == 1.1
    p = client.post(f"{base}/next").json()
    assert p["notes"] == [] and all(b["asked"]["density"] == 0 and b["missed"] == [] for b in p["bars"])
    assert p["sampling"]["temperature"] == 1.1
    # a body on next sets the settings too; "controls": null goes back to the measured ones
    p = client.post(f"{base}/next", json={"controls": None, "seed": 500}).json()
    assert p["seed"] == 500 and p["bars"][0]["asked"] == loop["measured"][0]
    assert client.get(base).json()["sampling"]["temperature"] == 1.1   # left out: kept
    r = client.patch(base, json={"controls": [{"density": 3}]})
    assert r.status_code == 400 and r.json()["argument"] == "controls"
    r = client.patch(base, json={"sampling": {"temperature": 0}})
    assert r.status_code == 422


def test_streamed_bars_arrive_before_the_pass_and_match_it(client):
    uid = upload(client)
    loop = start(client, uid)
    base = f"/api/uploads/{uid}/loops/{loop['loop_id']}"
    got = events(client, f"{base}/next/events")
    kinds = [k for k, _ in got]
    assert kinds == ["bar"] * 4 + ["pass"]
    bars = [d for k, d in got if k == "bar"]
    final = got[-1][1]
    assert [b["bar"] for b in bars] == [5, 6, 7, 8] and [b["index"] for b in bars] == [0, 1, 2, 3]
    assert [b["last"] for b in bars] == [False, False, False, True]
    assert all(b["number"] == final["number"] == 1 and b["seed"] == 11 for b in bars)
    assert [b["seconds"] for b in bars] == sorted(b["seconds"] for b in bars)
    streamed = sorted(tuple(n) for b in bars for n in b["notes"])
    assert sorted(tuple(n) for n in final["notes"]) == streamed
    # the same seed through the plain route gives the same variation
    again = client.post(f"{base}/next", json={"seed": 11}).json()
    assert again["notes"] == final["notes"] and again["number"] == 2


def test_keep_then_accept_writes_the_kept_variation_into_the_song(client):
    uid = upload(client)
    loop = start(client, uid)
    base = f"/api/uploads/{uid}/loops/{loop['loop_id']}"
    first = client.post(f"{base}/next").json()
    second = client.post(f"{base}/next").json()
    kept = client.post(f"{base}/keep", json={"number": 2}).json()
    assert kept["variation"] == 1 and kept["number"] == 2
    assert client.post(f"{base}/keep", json={"number": 2}).json() == kept       # keeping twice: the same one
    kept1 = client.post(f"{base}/keep", json={"number": 1}).json()
    assert (kept1["job_id"], kept1["variation"]) == (kept["job_id"], 2)
    job = client.get(f"/api/uploads/{uid}/jobs/{kept['job_id']}").json()
    assert job["status"] == "done" and job["kind"] == "infill" and job["request"]["loop_id"] == loop["loop_id"]
    assert [v["seed"] for v in job["variations"]] == [second["seed"], first["seed"]]
    assert [j["job_id"] for j in client.get(f"/api/uploads/{uid}/jobs").json()] == [kept["job_id"]]
    notes = client.get(kept["notes_url"]).json()
    t0, t1 = loop["span_ticks"]
    in_span = sorted(tuple(n) for n in notes["tracks"][0]["notes"] if t0 <= n[0] < t1)
    assert in_span == sorted(tuple(n) for n in second["notes"])
    # the existing accept route takes the kept variation
    midi = client.get(kept["midi_url"]).content
    r = client.post(f"/api/uploads/{uid}/accept", json={"job_id": kept["job_id"], "variation": kept["variation"]})
    assert r.status_code == 200 and r.json()["head"] == 1
    assert client.get(f"/api/uploads/{uid}/midi").content == midi
    # the loop keeps playing; a later pass is of the old version: keeping works, accepting it conflicts
    assert client.post(f"{base}/next").json()["number"] == 3
    late = client.post(f"{base}/keep", json={"number": 3}).json()
    r = client.post(f"/api/uploads/{uid}/accept", json={"job_id": late["job_id"], "variation": late["variation"]})
    assert r.status_code == 409
    # "more" works on the loop's job like on any infill job
    r = client.post(f"/api/uploads/{uid}/jobs/{kept['job_id']}/more", json={"variations": 1, "seed": 3})
    assert r.status_code == 202, r.text
    assert wait(client, uid, r.json())["status"] == "done"


def test_bad_input_and_other_sessions_get_typed_errors(client):
    uid = upload(client)
    r = client.post(f"/api/uploads/{uid}/loops", json={"track": 0, "first_bar": 8, "last_bar": 5})
    assert r.status_code == 400 and r.json()["argument"] == "last_bar"
    r = client.post(f"/api/uploads/{uid}/loops", json={"track": 9, "first_bar": 1, "last_bar": 2})
    assert r.status_code == 400 and r.json()["argument"] == "track"
    r = client.post(f"/api/uploads/{uid}/loops", json={"track": 0, "first_bar": 1, "last_bar": 999})
    assert r.status_code == 400 and r.json()["error"] == "BadRequestError"
    r = client.post(f"/api/uploads/{uid}/loops", json={"track": 0, "first_bar": 1, "last_bar": 2, "frobs": 1})
    assert r.status_code == 422
    loop = start(client, uid)
    base = f"/api/uploads/{uid}/loops/{loop['loop_id']}"
    assert client.post(f"{base}/keep", json={"number": 1}).status_code == 404    # nothing sampled yet
    assert client.post(f"/api/uploads/{uid}/loops/no-such-loop-0000/next").status_code == 404
    assert client.post(f"/api/uploads/{uid}/loops/../next").status_code == 404
    other = client.app.state.storage.new_session()                   # a second user's token
    r = client.post(f"{base}/next", headers={"X-Midirwkv-Session": other})
    assert r.status_code == 404                                        # another session's loop is not found
    assert client.delete(base).status_code == 204
    assert client.get(base).status_code == 404
    r = client.get(f"{base}/next/events")
    assert r.status_code == 404 and r.json()["argument"] == "loop_id"


def test_a_session_holds_a_bounded_number_of_loops(client):
    from midirwkv.server.live import MAX_LOOPS_PER_SESSION

    uid = upload(client)
    ids = [start(client, uid, context_bars=0)["loop_id"] for _ in range(MAX_LOOPS_PER_SESSION + 1)]
    assert client.get(f"/api/uploads/{uid}/loops/{ids[0]}").status_code == 404     # the oldest was dropped
    assert all(client.get(f"/api/uploads/{uid}/loops/{i}").status_code == 200 for i in ids[1:])


def test_loops_and_jobs_share_the_model_without_disturbing_each_other(client):
    uid = upload(client)
    body = {"track": 0, "first_bar": 5, "last_bar": 6, "context_bars": 2, "seed": 1, "variations": 4,
            "sampling": FAST}
    job = client.post(f"/api/uploads/{uid}/infill", json=body).json()
    loop = start(client, uid)
    base = f"/api/uploads/{uid}/loops/{loop['loop_id']}"
    during = [client.post(f"{base}/next").json()["notes"] for _ in range(3)]    # while the job samples
    job = wait(client, uid, job)
    assert job["status"] == "done", job
    alone = wait(client, uid, client.post(f"/api/uploads/{uid}/infill", json=body).json())
    for a, b in zip(job["variations"], alone["variations"]):
        assert client.get(a["midi_url"]).content == client.get(b["midi_url"]).content
    again = start(client, uid)
    base = f"/api/uploads/{uid}/loops/{again['loop_id']}"
    assert [client.post(f"{base}/next").json()["notes"] for _ in range(3)] == during


def test_a_client_leaving_the_stream_early_stops_that_pass_only(client):
    uid = upload(client)
    loop = start(client, uid, last_bar=12)
    base = f"/api/uploads/{uid}/loops/{loop['loop_id']}"
    with client.stream("GET", f"{base}/next/events") as r:
        first = next(json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: "))
    assert (first["number"], first["index"]) == (1, 0)
    later = client.post(f"{base}/next").json()
    assert later["number"] == 2 and len(later["bars"]) == 8
    # sampling stops at the next bar after the client left (unless pass 1 had already finished by then)
    assert client.get(base).json()["recent"] in ([2], [1, 2])
