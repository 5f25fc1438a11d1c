"""The server's storage: private modes, folders named by the token's hash, expiry, quotas, cleanup, migration."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient
from server_helpers import wait

from midirwkv.errors import BadRequestError
from midirwkv.server.app import create_app
from midirwkv.server.storage import (
    QuotaError,
    ServerLimits,
    Storage,
    UnauthorizedError,
    read_json,
    session_key,
)

SONG = Path(__file__).parent / "fixtures" / "pop909" / "318.mid"
LOCAL = "http://127.0.0.1"
MIDI = {"Content-Type": "audio/midi"}
FAST = {"max_notes_per_bar": 4}


@pytest.fixture(autouse=True)
def no_limit_env(monkeypatch):
    for var in ServerLimits.ENV.values():
        monkeypatch.delenv(var, raising=False)


def modes(root: Path) -> tuple[set[int], set[int]]:
    """(modes of the folders, modes of the files) under and including ``root``."""
    dirs, files = {stat.S_IMODE(root.stat().st_mode)}, set()
    for p in root.rglob("*"):
        (dirs if p.is_dir() else files).add(stat.S_IMODE(p.stat().st_mode))
    return dirs, files


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def app_client(tmp_path: Path, model_dir: Path, **limits) -> TestClient:
    app = create_app(tmp_path / "data", model_dir, threads=1, limits=ServerLimits(**limits))
    c = TestClient(app, base_url=LOCAL)
    c.headers["X-Midirwkv-Session"] = c.post("/api/session").json()["session"]
    return c




# ------------------------------------------------------------------------------------- private, no token


def test_folders_0700_files_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        st = Storage(tmp_path / "data")
        key = st.resolve(st.new_session())
        uid = st.add_upload(key, SONG.read_bytes(), "song.mid")
        st.push_version(key, uid, SONG.read_bytes(), {"job_id": "x", "variation": 1})
        _, folder = st.new_job_dir(key, uid)
        st.write_json(folder / "job.json", {"status": "done"})
    finally:
        os.umask(old)
    assert modes(tmp_path / "data") == ({0o700}, {0o600})


def test_the_token_is_never_stored(tmp_path, tiny_model_dir):
    c = app_client(tmp_path, tiny_model_dir)
    token = c.headers["X-Midirwkv-Session"]
    uid = c.post("/api/uploads?filename=song.mid", content=SONG.read_bytes(), headers=MIDI).json()["upload_id"]
    body = {"track": 0, "first_bar": 5, "last_bar": 6, "context_bars": 2, "seed": 1, "sampling": FAST}
    job = wait(c, uid, c.post(f"/api/uploads/{uid}/infill", json=body).json())
    assert job["status"] == "done" and "session" not in job
    root = tmp_path / "data"
    assert [p.name for p in root.iterdir()] == [hashlib.sha256(token.encode()).hexdigest()]
    for p in root.rglob("*"):
        assert token not in p.name
        if p.is_file():
            assert token.encode() not in p.read_bytes(), p
    record = read_json(root / session_key(token) / uid / "jobs" / job["job_id"] / "job.json")
    assert "session" not in record and "_session" not in record
    assert modes(root) == ({0o700}, {0o600})
    # the folder name is no token: sending it back opens nothing
    assert TestClient(c.app, base_url=LOCAL, headers={"X-Midirwkv-Session": session_key(token)[:64]}).get(
        "/api/uploads").status_code == 401


def test_an_old_data_folder_is_converted(tmp_path):
    root = tmp_path / "data"
    token = "T" * 24
    job_dir = root / token / ("U" * 24) / "jobs" / ("J" * 24)
    job_dir.mkdir(parents=True, mode=0o755)
    (root / token / "session.json").write_text(json.dumps({"created": time.time()}))
    (root / token / ("U" * 24) / "upload.json").write_text(json.dumps({"filename": "a.mid", "created": 1.0}))
    (job_dir / "job.json").write_text(json.dumps({"job_id": "J" * 24, "session": token, "status": "done"}))
    for p in [root, *root.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    st = Storage(root)
    key = st.resolve(token)
    assert key == session_key(token) and not (root / token).exists()
    assert "session" not in read_json(root / key / ("U" * 24) / "jobs" / ("J" * 24) / "job.json")
    assert modes(root) == ({0o700}, {0o600})
    assert st.used_bytes(key) == tree_bytes(root / key)


# ------------------------------------------------------------------------------------------------ expiry


def test_unused_sessions_expire_and_are_deleted(tmp_path):
    st = Storage(tmp_path / "data", ServerLimits(session_days=1))
    old, busy, fresh = (st.new_session() for _ in range(3))
    for token in (old, busy, fresh):
        st.add_upload(st.resolve(token), SONG.read_bytes(), "a.mid")
    two_days_ago = time.time() - 2 * 86400
    for token in (old, busy):
        os.utime(tmp_path / "data" / session_key(token) / "session.json", (two_days_ago, two_days_ago))
    with pytest.raises(UnauthorizedError, match="expired"):
        st.resolve(old)
    assert st.cleanup(busy={session_key(busy)}) == 1      # a session with a running job stays
    assert not (tmp_path / "data" / session_key(old)).exists()
    assert (tmp_path / "data" / session_key(busy)).exists()
    st.resolve(fresh)
    assert st.used_bytes() == tree_bytes(tmp_path / "data")
    # a restart cleans up as well
    Storage(tmp_path / "data", ServerLimits(session_days=1))
    assert not (tmp_path / "data" / session_key(busy)).exists()


def test_using_a_session_keeps_it(tmp_path):
    st = Storage(tmp_path / "data", ServerLimits(session_days=1))
    token = st.new_session()
    marker = tmp_path / "data" / session_key(token) / "session.json"
    an_hour_ago = time.time() - 3600
    os.utime(marker, (an_hour_ago, an_hour_ago))
    st.resolve(token)
    assert time.time() - marker.stat().st_mtime < 60


def test_the_cookie_lasts_as_long_as_the_session(tmp_path, tiny_model_dir):
    c = TestClient(create_app(tmp_path / "data", tiny_model_dir, threads=1, limits=ServerLimits(session_days=2)),
                   base_url=LOCAL)
    cookie = c.post("/api/session").headers["set-cookie"]
    assert "Max-Age=172800" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie


# ------------------------------------------------------------------------------------------------ quotas


def test_session_quota_then_room_after_expiry(tmp_path):
    st = Storage(tmp_path / "data", ServerLimits(max_sessions=2, session_days=1))
    first, _ = st.new_session(), st.new_session()
    with pytest.raises(QuotaError) as err:
        st.new_session()
    assert err.value.argument == "max_sessions" and err.value.http_status == 429 and "MIDIRWKV_MAX_SESSIONS" in err.value.fix
    then = time.time() - 2 * 86400
    os.utime(tmp_path / "data" / session_key(first) / "session.json", (then, then))
    st.new_session()


def test_upload_quota_and_delete(tmp_path, tiny_model_dir):
    c = app_client(tmp_path, tiny_model_dir, max_uploads=2)
    ids = [c.post("/api/uploads", content=SONG.read_bytes(), headers=MIDI).json()["upload_id"] for _ in range(2)]
    r = c.post("/api/uploads", content=SONG.read_bytes(), headers=MIDI)
    assert r.status_code == 429 and r.json()["argument"] == "max_uploads" and "DELETE" in r.json()["fix"]
    assert c.delete(f"/api/uploads/{ids[0]}").status_code == 204
    assert c.get(f"/api/uploads/{ids[0]}").status_code == 404
    assert c.post("/api/uploads", content=SONG.read_bytes(), headers=MIDI).status_code == 201
    other = TestClient(c.app, base_url=LOCAL)
    other.headers["X-Midirwkv-Session"] = other.post("/api/session").json()["session"]
    assert other.delete(f"/api/uploads/{ids[1]}").status_code == 404   # another session's upload


def test_bytes_quota_per_session_and_in_all(tmp_path):
    size = SONG.stat().st_size
    st = Storage(tmp_path / "data", ServerLimits(max_session_mb=2.5 * size / 2**20, max_data_mb=4.5 * size / 2**20))
    a, b = (st.resolve(st.new_session()) for _ in range(2))
    st.add_upload(a, SONG.read_bytes(), "1.mid")
    uid = st.add_upload(a, SONG.read_bytes(), "2.mid")
    with pytest.raises(QuotaError) as err:
        st.push_version(a, uid, SONG.read_bytes(), {"job_id": "x", "variation": 1})
    assert err.value.argument == "max_session_mb"
    st.add_upload(b, SONG.read_bytes(), "3.mid")
    st.add_upload(b, SONG.read_bytes(), "4.mid")
    c = st.resolve(st.new_session())
    with pytest.raises(QuotaError) as err:
        st.add_upload(c, SONG.read_bytes(), "5.mid")
    assert err.value.argument == "max_data_mb"
    st.delete_upload(a, uid)
    st.add_upload(c, SONG.read_bytes(), "5.mid")
    assert st.used_bytes() == tree_bytes(tmp_path / "data")


def test_stored_jobs_past_the_quota_drop_the_oldest_finished(tmp_path):
    st = Storage(tmp_path / "data", ServerLimits(max_jobs=3))
    key = st.resolve(st.new_session())
    uid = st.add_upload(key, SONG.read_bytes(), "a.mid")
    made = []
    for status in ("running", "done", "failed"):
        job_id, folder = st.new_job_dir(key, uid)
        st.write_json(folder / "job.json", {"job_id": job_id, "status": status, "created": time.time()})
        made.append(job_id)
        time.sleep(0.01)
    new_id, _ = st.new_job_dir(key, uid)
    left = {p.name for p in (tmp_path / "data" / key / uid / "jobs").iterdir()}
    assert left == {made[0], made[2], new_id}   # the oldest finished one went; the running one stays
    assert st.used_bytes() == tree_bytes(tmp_path / "data")


def test_per_session_queue_limit(tmp_path, tiny_model_dir):
    c = app_client(tmp_path, tiny_model_dir, max_queued=1)
    uid = c.post("/api/uploads", content=SONG.read_bytes(), headers=MIDI).json()["upload_id"]
    long = {"track": 0, "first_bar": 1, "last_bar": 16, "variations": 16, "seed": 4, "context_bars": 16,
            "sampling": {"max_notes_per_bar": 64}}
    first = c.post(f"/api/uploads/{uid}/infill", json=long)
    assert first.status_code == 202
    r = c.post(f"/api/uploads/{uid}/infill", json=long)
    assert r.status_code == 429 and r.json()["argument"] == "max_queued", r.text
    assert c.delete(f"/api/uploads/{uid}").status_code == 409          # a job of it is running
    other = TestClient(c.app, base_url=LOCAL)
    other.headers["X-Midirwkv-Session"] = other.post("/api/session").json()["session"]
    uid2 = other.post("/api/uploads", content=SONG.read_bytes(), headers=MIDI).json()["upload_id"]
    second = other.post(f"/api/uploads/{uid2}/infill", json=long | {"variations": 1, "last_bar": 2})
    assert second.status_code == 202      # the limit is per session
    c.post(f"/api/uploads/{uid}/jobs/{first.json()['job_id']}/cancel")
    assert wait(c, uid, first.json())["status"] in ("cancelled", "done")
    assert wait(other, uid2, second.json())["status"] == "done"
    assert c.post(f"/api/uploads/{uid}/infill", json=long | {"variations": 1, "last_bar": 2}).status_code == 202


# ------------------------------------------------------------------------------------------------ settings


def test_limits_from_the_environment(monkeypatch):
    assert ServerLimits.from_env() == ServerLimits()
    monkeypatch.setenv("MIDIRWKV_MAX_UPLOADS", "3")
    monkeypatch.setenv("MIDIRWKV_SESSION_DAYS", "0.5")
    monkeypatch.setenv("MIDIRWKV_MAX_DATA_MB", "100")
    limits = ServerLimits.from_env()
    assert (limits.max_uploads, limits.session_days, limits.max_data_mb) == (3, 0.5, 100.0)
    for bad in ("0", "-1", "x", "2.5", "inf", "nan"):
        monkeypatch.setenv("MIDIRWKV_MAX_UPLOADS", bad)
        with pytest.raises(BadRequestError) as err:
            ServerLimits.from_env()
        assert err.value.argument == "MIDIRWKV_MAX_UPLOADS" and "unset" in err.value.fix
    for bad in ({"max_jobs": 0}, {"max_queued": 1.5}, {"session_days": float("inf")}, {"max_sessions": True}):
        with pytest.raises(BadRequestError):
            ServerLimits(**bad)


def test_a_data_folder_shared_with_other_files_leaves_them_alone(tmp_path):
    root = tmp_path / "shared"
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "a.jpg").write_bytes(b"x")
    (root / "notes.txt").write_text("mine")
    for p in (root, root / "photos"):
        os.chmod(p, 0o755)
    os.chmod(root / "notes.txt", 0o644)
    long_ago = time.time() - 365 * 86400
    for p in (root / "photos", root / "notes.txt"):
        os.utime(p, (long_ago, long_ago))
    st = Storage(root, ServerLimits(session_days=1))
    key = st.resolve(st.new_session())
    st.cleanup()
    assert (root / "photos" / "a.jpg").exists() and (root / "notes.txt").read_text() == "mine"
    assert stat.S_IMODE(root.stat().st_mode) == 0o755 and stat.S_IMODE((root / "notes.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((root / key).stat().st_mode) == 0o700
    assert st.used_bytes() == tree_bytes(root / key)
