"""The HTTP API end to end with FastAPI's test client, the real engine and a tiny random-weight RWKV7."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient
from server_helpers import upload_song, wait

from midirwkv.music.remi import encode_score, load_score
from midirwkv.music.vocab import Vocab
from midirwkv.server.app import MAX_UPLOAD_BYTES, create_app
from midirwkv.server.storage import read_json, session_key

FIXTURES = Path(__file__).parent / "fixtures"
SONG = FIXTURES / "pop909" / "318.mid"
BACH = FIXTURES / "bach" / "bwv66_6.mid"
FAST = {"max_notes_per_bar": 4}
LOCAL = "http://127.0.0.1"  # the server answers loopback Host names only
MIDI = {"Content-Type": "audio/midi"}


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    return tiny_model_dir


@pytest.fixture
def client(tmp_path, model_dir):
    app = create_app(tmp_path / "data", model_dir, threads=1)
    with TestClient(app, base_url=LOCAL) as c:
        token = c.post("/api/session").json()["session"]
        c.headers["X-Midirwkv-Session"] = token
        c.data_dir = tmp_path / "data"
        yield c


def upload(c: TestClient, path: Path = SONG) -> dict:
    return upload_song(c, path)




def infill(c: TestClient, uid: str, **kw) -> dict:
    body = {"track": 0, "first_bar": 5, "last_bar": 6, "context_bars": 2, "sampling": FAST} | kw
    r = c.post(f"/api/uploads/{uid}/infill", json=body)
    assert r.status_code == 202, r.text
    return r.json()


def test_upload_inspect_notes_and_download(client):
    info = upload(client)
    assert info["filename"] == "318.mid" and info["version"] == 0 and info["head"] == 0
    assert info["n_bars"] > 8 and len(info["time_sigs"]) == info["n_bars"]
    assert {t["index"] for t in info["tracks"]} == {int(k) for k in info["controls"]}
    first = info["controls"][str(info["tracks"][0]["index"])]
    assert len(first) == info["n_bars"] and set(first[0]) >= {"density", "poly_min", "dur_quarter"}
    notes = client.get(f"/api/uploads/{info['upload_id']}/notes").json()
    assert len(notes["bar_ticks"]) == info["n_bars"] + 1 and notes["tracks"][0]["notes"]
    r = client.get(f"/api/uploads/{info['upload_id']}/midi")
    assert r.status_code == 200 and r.content == SONG.read_bytes()
    assert "318_v0.mid" in r.headers["content-disposition"]
    assert [u["upload_id"] for u in client.get("/api/uploads").json()] == [info["upload_id"]]


def test_infill_job_changes_only_the_selected_bars(client):
    info = upload(client)
    uid = info["upload_id"]
    job = wait(client, uid, infill(client, uid, variations=2, seed=5))
    assert job["status"] == "done", job
    assert [v["variation"] for v in job["variations"]] == [1, 2] and [
        v["seed"] for v in job["variations"]
    ] == [5, 6]
    for bar in job["variations"][0]["bars"]:
        assert bar["bar"] in (5, 6) and set(bar["missed"]) <= set(bar["asked"])
    vocab = Vocab.load()
    old = encode_score(load_score(SONG), vocab)
    r = client.get(job["variations"][0]["midi_url"])
    assert r.status_code == 200
    new = encode_score(load_score(r.content), vocab)
    assert new.bar_ticks == old.bar_ticks
    for t_old, t_new in zip(old.tracks, new.tracks):
        keep = (
            range(len(t_old.bars))
            if t_old.index != 0
            else [b for b in range(len(t_old.bars)) if b not in (4, 5)]
        )
        assert all(t_old.bars[b] == t_new.bars[b] for b in keep)
    assert client.get(f"/api/uploads/{uid}/jobs/{job['job_id']}/variations/2/notes").status_code == 200


def test_controls_asked_are_reported(client):
    uid = upload(client)["upload_id"]
    controls = [{"density": 3}, {"density": 0, "poly_max": 1}]
    job = wait(client, uid, infill(client, uid, controls=controls, seed=1))
    assert job["status"] == "done", job
    asked = [b["asked"] for b in job["variations"][0]["bars"]]
    assert asked[0]["density"] == 3 and asked[0]["poly_min"] is None and asked[1]["density"] == 0
    for b in job["variations"][0]["bars"]:
        achieved = b["achieved"]
        assert b["missed"] == [
            k for k, v in b["asked"].items() if v is not None and (achieved is None or achieved[k] != v)
        ]


def test_more_variations_reuse_the_prompt_and_accept_undo_redo(client):
    uid = upload(client)["upload_id"]
    first = wait(client, uid, infill(client, uid, seed=2))
    r = client.post(f"/api/uploads/{uid}/jobs/{first['job_id']}/more", json={"variations": 2, "seed": 40})
    assert r.status_code == 202, r.text
    more = wait(client, uid, r.json())
    assert more["status"] == "done" and more["kind"] == "more" and more["parent_job"] == first["job_id"]
    health = client.get("/api/health").json()
    assert (health["prefills"], health["cache_hits"]) == (1, 1)  # the prompt was read once
    assert more["message"].endswith("ready")
    assert [v["seed"] for v in more["variations"]] == [40, 41]
    assert more["request"]["first_bar"] == 5 and more["request"]["root_job"] == first["job_id"]
    listed = client.get(f"/api/uploads/{uid}/jobs").json()
    assert [j["job_id"] for j in listed] == [first["job_id"], more["job_id"]]

    var = client.get(more["variations"][1]["midi_url"]).content
    r = client.post(f"/api/uploads/{uid}/accept", json={"job_id": more["job_id"], "variation": 2})
    assert r.status_code == 200 and r.json()["head"] == 1
    assert client.get(f"/api/uploads/{uid}/midi").content == var
    # the first job was made from version 0: accepting it now would drop the accepted change
    r = client.post(f"/api/uploads/{uid}/accept", json={"job_id": first["job_id"], "variation": 1})
    assert r.status_code == 409 and "another version" in r.json()["message"]
    assert client.post(f"/api/uploads/{uid}/undo").json()["head"] == 0
    assert client.get(f"/api/uploads/{uid}/midi").content == SONG.read_bytes()
    assert client.post(f"/api/uploads/{uid}/undo").status_code == 409
    assert client.post(f"/api/uploads/{uid}/redo").json()["head"] == 1
    assert client.get(f"/api/uploads/{uid}/midi?version=1").content == var


def test_bad_input_gives_clear_4xx(client, tmp_path):
    r = client.post("/api/uploads?filename=x.mid", content=b"not a midi file at all", headers=MIDI)
    assert r.status_code == 422 and r.json()["error"] == "BadMidiError" and "MThd" in r.json()["message"]
    r = client.post("/api/uploads", content=b"MThd" + b"\0" * (MAX_UPLOAD_BYTES + 1), headers=MIDI)
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"
    uid = upload(client)["upload_id"]
    n_bars = client.get(f"/api/uploads/{uid}").json()["n_bars"]
    bad = [
        ({"last_bar": n_bars + 3}, "last_bar"),
        ({"track": 99}, "track"),
        ({"first_bar": 0}, "first_bar"),
        ({"first_bar": 6, "last_bar": 5}, "last_bar"),
        ({"controls": [{"density": 40}, {}]}, "controls.0.density"),
        ({"controls": [{}]}, "controls"),
        ({"sampling": {"temperature": 0}}, "sampling.temperature"),
        ({"colour": "red"}, "colour"),
    ]
    for change, argument in bad:
        r = client.post(
            f"/api/uploads/{uid}/infill", json={"track": 0, "first_bar": 5, "last_bar": 6} | change
        )
        assert 400 <= r.status_code < 500, (change, r.text)
        body = r.json()
        assert body["argument"] == argument and body["message"] and body["fix"], (change, body)
    assert client.get("/api/uploads/not-a-real-id-0123456789").status_code == 404
    assert client.get("/api/uploads/..%2F..%2Fetc").status_code == 404
    assert client.get(f"/api/uploads/{uid}/jobs/AAAAAAAAAAAAAAAAAAAAAAAA").status_code == 404
    assert client.get(f"/api/uploads/{uid}/midi?version=7").status_code == 404
    assert client.get("/api/nothing-here").json()["error"] == "HTTPError"


def test_sessions_are_isolated_and_required(client, model_dir):
    uid = upload(client)["upload_id"]
    job = wait(client, uid, infill(client, uid, seed=1))
    other = TestClient(client.app, base_url=LOCAL)
    assert other.get("/api/uploads").status_code == 401
    token = other.post("/api/session").json()["session"]
    assert token != client.headers["X-Midirwkv-Session"]
    assert other.get("/api/uploads").json() == []  # the cookie now carries the new session
    for url in (
        f"/api/uploads/{uid}",
        f"/api/uploads/{uid}/midi",
        f"/api/uploads/{uid}/jobs/{job['job_id']}",
        job["variations"][0]["midi_url"],
    ):
        assert other.get(url).status_code == 404, url
    assert other.post(f"/api/uploads/{uid}/jobs/{job['job_id']}/more", json={}).status_code == 404
    forged = TestClient(client.app, base_url=LOCAL, headers={"X-Midirwkv-Session": "A" * 24})
    assert forged.get("/api/uploads").status_code == 401


def test_uploads_stay_inside_the_data_folder(client):
    info = upload(client, SONG)
    r = client.post("/api/uploads?filename=../../../../tmp/evil.mid", content=SONG.read_bytes(), headers=MIDI)
    assert r.status_code == 201 and r.json()["filename"] == "evil.mid"
    root = client.data_dir.resolve()
    files = [p for p in root.rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(root) for p in files)
    assert not any("evil" in p.name for p in files)
    key = session_key(client.headers["X-Midirwkv-Session"])
    assert (root / key / info["upload_id"] / "v0.mid").read_bytes() == SONG.read_bytes()


def test_cancel_queued_and_running_jobs(client):
    uid = upload(client)["upload_id"]
    jobs = [infill(client, uid, variations=4, last_bar=8, seed=i) for i in range(3)]
    r = client.post(f"/api/uploads/{uid}/jobs/{jobs[2]['job_id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] in ("cancelled", "running")
    client.post(f"/api/uploads/{uid}/jobs/{jobs[0]['job_id']}/cancel")
    states = [wait(client, uid, j)["status"] for j in jobs]
    assert states[2] == "cancelled" and states[1] == "done"
    assert states[0] in ("cancelled", "done")
    r = client.post(f"/api/uploads/{uid}/jobs/{jobs[1]['job_id']}/cancel")
    assert r.status_code == 409 and r.json()["error"] == "ConflictError"


def test_cancel_a_running_job_stops_it(client):
    uid = upload(client)["upload_id"]
    job = infill(
        client,
        uid,
        first_bar=1,
        last_bar=16,
        variations=16,
        seed=4,
        context_bars=16,
        sampling={"max_notes_per_bar": 64},
    )
    end = time.time() + 30
    while (seen := client.get(f"/api/uploads/{uid}/jobs/{job['job_id']}").json())["progress"] == 0:
        assert seen["status"] in ("queued", "running") and time.time() < end, seen
        time.sleep(0.01)
    r = client.post(f"/api/uploads/{uid}/jobs/{job['job_id']}/cancel")
    assert r.status_code == 200, r.text
    final = wait(client, uid, job)
    assert final["status"] == "cancelled" and final["message"] == "cancelled while running"
    assert len(final["variations"]) < 16 and final["progress"] < 1


def test_progress_events_stream(client):
    uid = upload(client)["upload_id"]
    job = infill(client, uid, seed=3, variations=2)
    events = []
    with client.stream("GET", f"/api/uploads/{uid}/jobs/{job['job_id']}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events[-1]["status"] == "done" and events[-1]["progress"] == 1.0
    assert [e["progress"] for e in events] == sorted(e["progress"] for e in events)


def test_restart_keeps_uploads_and_results_and_fails_interrupted_jobs(tmp_path, model_dir):
    data = tmp_path / "data"
    with TestClient(create_app(data, model_dir, threads=1), base_url=LOCAL) as c:
        c.headers["X-Midirwkv-Session"] = token = c.post("/api/session").json()["session"]
        uid = upload(c)["upload_id"]
        done = wait(c, uid, infill(c, uid, seed=9))
        var = c.get(done["variations"][0]["midi_url"]).content
    # a job the server was running when it died: its job.json still says "running"
    job_dir = data / session_key(token) / uid / "jobs" / done["job_id"]
    record = read_json(job_dir / "job.json")
    stuck = data / session_key(token) / uid / "jobs" / ("B" * 24)
    stuck.mkdir()
    (stuck / "job.json").write_text(
        json.dumps(record | {"job_id": "B" * 24, "status": "running", "variations": [], "finished": None})
    )
    with TestClient(create_app(data, model_dir, threads=1), base_url=LOCAL,
                    headers={"X-Midirwkv-Session": token}) as c:
        assert c.get("/api/health").json()["recovered_jobs"] == 1
        assert c.get(f"/api/uploads/{uid}/midi").content == SONG.read_bytes()
        again = c.get(f"/api/uploads/{uid}/jobs/{done['job_id']}").json()
        assert again["status"] == "done" and c.get(again["variations"][0]["midi_url"]).content == var
        failed = c.get(f"/api/uploads/{uid}/jobs/{'B' * 24}").json()
        assert failed["status"] == "failed" and "server stopped" in failed["error"]["message"]
        # the prompt cache is gone after a restart: more variations rebuild it
        more = wait(
            c,
            uid,
            c.post(
                f"/api/uploads/{uid}/jobs/{done['job_id']}/more", json={"variations": 1, "seed": 9}
            ).json(),
        )
        assert more["status"] == "done" and c.get(more["variations"][0]["midi_url"]).content == var


def test_openapi_and_page_are_served(client):
    spec = client.get("/openapi.json").json()
    assert "/api/uploads/{upload_id}/infill" in spec["paths"]
    assert "InfillIn" in spec["components"]["schemas"] and "ErrorBody" in spec["components"]["schemas"]
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    for asset in ("app.js", "style.css"):
        r = client.get(f"/static/{asset}")
        assert r.status_code == 200 and len(r.text) > 100
    # nothing is fetched from the internet: no absolute URLs in the page's files
    for name in ("index.html", "app.js", "style.css"):
        text = client.get("/" if name == "index.html" else f"/static/{name}").text
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_add_track_job_more_variations_and_accept(client):
    uid = upload(client, BACH)["upload_id"]
    body = {"program": 33, "name": "Bass", "variations": 2, "seed": 5, "sampling": FAST,
            "controls": {"density_min": 1, "density_max": 4}}
    r = client.post(f"/api/uploads/{uid}/add-track", json=body)
    assert r.status_code == 202, r.text
    job = wait(client, uid, r.json())
    assert job["status"] == "done" and job["kind"] == "add_track", job
    assert [v["seed"] for v in job["variations"]] == [5, 6]
    vocab = Vocab.load()
    old_score = load_score(BACH)
    old = encode_score(old_score, vocab)
    for var in job["variations"]:
        report = var["track_controls"]
        assert report["track"] == len(old_score.tracks)
        assert (report["asked"]["density_min"], report["asked"]["density_max"]) == (1, 4)
        assert report["missed"] == [k for k, v in report["asked"].items()
                                    if v is not None and (report["achieved"] is None or report["achieved"][k] != v)]
        assert [b["bar"] for b in var["bars"]] == list(range(1, old.n_bars + 1))
        new_score = load_score(client.get(var["midi_url"]).content)
        assert len(new_score.tracks) == len(old_score.tracks) + 1
        assert new_score.tracks[-1].program == 33 and new_score.tracks[-1].name == "Bass"
        for a, b in zip(old_score.tracks, new_score.tracks):
            assert a.notes.numpy()["time"].tolist() == b.notes.numpy()["time"].tolist()
            assert a.notes.numpy()["pitch"].tolist() == b.notes.numpy()["pitch"].tolist()
        assert encode_score(new_score, vocab).bar_ticks == old.bar_ticks
    r = client.post(f"/api/uploads/{uid}/jobs/{job['job_id']}/more", json={"variations": 1, "seed": 5})
    more = wait(client, uid, r.json())
    assert more["status"] == "done" and more["variations"][0]["track_controls"]["track"] == len(old_score.tracks)
    assert client.get(more["variations"][0]["midi_url"]).content == client.get(job["variations"][0]["midi_url"]).content
    health = client.get("/api/health").json()
    assert (health["prefills"], health["cache_hits"]) == (1, 1)      # the other tracks were read once
    r = client.post(f"/api/uploads/{uid}/accept", json={"job_id": job["job_id"], "variation": 1})
    assert r.status_code == 200 and len(r.json()["tracks"]) == len(old.tracks) + 1
    # regenerate an existing track of the accepted version; drums as a new track
    regen = wait(client, uid, client.post(f"/api/uploads/{uid}/add-track",
                                          json={"regenerate": 0, "seed": 1, "sampling": FAST}).json())
    assert regen["status"] == "done" and regen["variations"][0]["track_controls"]["track"] == 0
    assert regen["variations"][0]["track_controls"]["asked"]["poly_min"] is not None      # measured
    drums = wait(client, uid, client.post(f"/api/uploads/{uid}/add-track",
                                          json={"program": -1, "seed": 1, "sampling": FAST}).json())
    assert drums["status"] == "done"
    assert load_score(client.get(drums["variations"][0]["midi_url"]).content).tracks[-1].is_drum


def test_add_track_bad_input_gives_clear_4xx(client):
    uid = upload(client, BACH)["upload_id"]
    bad = [
        ({}, "program"),
        ({"program": 1, "regenerate": 0}, "regenerate"),
        ({"regenerate": 99}, "regenerate"),
        ({"program": 200}, "program"),
        ({"program": 1, "controls": {"density_min": 40}}, "controls.density_min"),
        ({"program": 1, "controls": {"loudness": 3}}, "controls.loudness"),
        ({"program": 1, "sampling": {"top_p": 0}}, "sampling.top_p"),
    ]
    for change, argument in bad:
        r = client.post(f"/api/uploads/{uid}/add-track", json=change)
        assert 400 <= r.status_code < 500, (change, r.text)
        body = r.json()
        assert body["argument"] == argument and body["message"] and body["fix"], (change, body)
    spec = client.get("/openapi.json").json()
    assert "/api/uploads/{upload_id}/add-track" in spec["paths"] and "AddTrackIn" in spec["components"]["schemas"]


def test_defaults_endpoint_serves_sample_config_and_the_schema_bounds(client):
    from midirwkv.config import SampleConfig

    d = client.get("/api/defaults").json()
    cfg = SampleConfig()
    assert d["sampling"] == {name: getattr(cfg, name) for name in d["sampling"]}
    names = {"temperature", "top_k", "top_p", "repetition_penalty", "min_prob", "keep_key", "keep_register"}
    assert names <= set(d["sampling"])
    assert d["ranges"]["keep_key"] == {"min": 0, "max": 10, "min_exclusive": False, "max_exclusive": False}
    assert d["ranges"]["temperature"]["min_exclusive"] is True
    # the per-bar control ranges and the default context come from music.controls / music.infill too
    from midirwkv.music.controls import DENSITY_MAX, POLY_RANGE
    from midirwkv.music.infill import CONTEXT_BARS

    assert (d["controls"]["density"]["min"], d["controls"]["density"]["max"]) == (0, DENSITY_MAX)
    assert (d["controls"]["poly_min"]["min"], d["controls"]["poly_max"]["max"]) == POLY_RANGE
    assert d["context_bars"] == CONTEXT_BARS and d["context_range"]["max"] == 64
    page = client.get("/").text
    assert 'data-sampling="keep_key"' in page and 'data-sampling="keep_register"' in page
    assert 'value="0.95"' not in page and 'value="1.0"' not in page      # the page asks the server


def test_pitch_prior_settings_are_accepted_and_checked(client):
    uid = upload(client)["upload_id"]
    prior = {"keep_key": 1.5, "keep_register": 2}
    job = wait(client, uid, infill(client, uid, seed=3, sampling=FAST | prior))
    assert job["status"] == "done", job
    assert job["request"]["sampling"]["keep_key"] == 1.5 and job["request"]["sampling"]["keep_register"] == 2
    for bad in (-1, "abc", 11, "nan", "inf"):
        for field in ("keep_key", "keep_register"):
            r = client.post(f"/api/uploads/{uid}/infill",
                            json={"track": 0, "first_bar": 5, "last_bar": 6, "sampling": {field: bad}})
            assert r.status_code == 422, (field, bad, r.text)
            assert r.json()["argument"] == f"sampling.{field}" and r.json()["fix"], r.json()
