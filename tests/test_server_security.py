"""What the server trusts: Host names (DNS rebinding), the page a state-changing request comes from, upload
content types, security headers, the offline /docs page and HEAD /."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_helpers import upload_song

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from midirwkv.server import app as app_module
from midirwkv.server.app import create_app
from midirwkv.server.security import ALLOWED_HOSTS_ENV, HostPolicy, check_request, split_host

SONG = Path(__file__).parent / "fixtures" / "pop909" / "318.mid"
LOCAL = "http://127.0.0.1"
MIDI = {"Content-Type": "audio/midi"}


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_dir):
    application = create_app(tmp_path_factory.mktemp("sec") / "data", tiny_model_dir, threads=1)
    with TestClient(application, base_url=LOCAL):  # start-up and shut-down of the app run once
        yield application


@pytest.fixture
def client(app):
    c = TestClient(app, base_url=LOCAL)
    c.headers["X-Midirwkv-Session"] = c.post("/api/session").json()["session"]
    return c


def upload(c: TestClient) -> str:
    return upload_song(c, SONG, "song.mid")["upload_id"]


# ------------------------------------------------------------------------------------------------- Host


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "127.0.0.1", "localhost:8000", "LocalHost", "localhost.",
                                  "[::1]:8000", "127.1.2.3:80"])
def test_loopback_hosts_are_answered(app, host):
    r = TestClient(app, base_url=LOCAL).get("/api/health", headers={"Host": host})
    assert r.status_code == 200, (host, r.text)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "localhost.evil.example",
                                  "192.168.1.10:8000", "[::2]", "0.0.0.0:8000", ""])
def test_other_hosts_are_refused_on_every_route(app, host):
    c = TestClient(app, base_url=LOCAL)
    for method, url in (("GET", "/"), ("GET", "/api/health"), ("POST", "/api/session"), ("GET", "/docs"),
                        ("GET", "/static/app.js")):
        r = c.request(method, url, headers={"Host": host})
        assert r.status_code == 403, (host, url, r.text)
        body = r.json()
        assert body["error"] == "ForbiddenError" and body["argument"] == "Host" and "--host" in body["fix"]
        assert "set-cookie" not in r.headers


def test_the_bound_host_and_listed_names_are_answered(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv(ALLOWED_HOSTS_ENV, "studio.lan, Other.Lan:9000")
    application = create_app(tmp_path / "data", tiny_model_dir, threads=1, allowed_hosts=("192.168.1.10",))
    c = TestClient(application, base_url=LOCAL)
    for host in ("192.168.1.10:8000", "studio.lan", "other.lan:8000", "127.0.0.1"):
        assert c.get("/api/health", headers={"Host": host}).status_code == 200, host
    assert c.get("/api/health", headers={"Host": "192.168.1.11"}).status_code == 403
    # a wildcard bind address is no name a browser sends
    monkeypatch.delenv(ALLOWED_HOSTS_ENV)
    assert HostPolicy(["0.0.0.0", "::"]).extra == frozenset()


def test_split_host():
    assert split_host("[::1]:8000") == ("::1", "8000")
    assert split_host("LOCALHOST.:80") == ("localhost", "80")
    assert split_host("127.0.0.1") == ("127.0.0.1", None)


# ------------------------------------------------------------------------------------------------ Origin


def test_state_changing_requests_from_another_page_are_refused(client):
    uid = upload(client)
    head_before = client.get(f"/api/uploads/{uid}").json()["head"]
    # the attack of issue 14: a page on another port of 127.0.0.1, a no-cors text/plain POST
    foreign = [
        {"Origin": "http://127.0.0.1:9999", "Sec-Fetch-Site": "same-site"},
        {"Origin": "http://127.0.0.1:9999"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://evil.example"},
        {"Origin": "https://127.0.0.1"},
        {"Origin": "null"},
    ]
    for headers in foreign:
        for url, body in ((f"/api/uploads/{uid}/undo", None), ("/api/session", None),
                          (f"/api/uploads/{uid}/infill", {"track": 0, "first_bar": 1, "last_bar": 1})):
            r = client.post(url, json=body, headers=headers | {"Content-Type": "text/plain"})
            assert r.status_code == 403, (headers, url, r.text)
            assert r.json()["argument"] in ("Origin", "Sec-Fetch-Site")
        r = client.post("/api/uploads", content=SONG.read_bytes(), headers=headers | MIDI)
        assert r.status_code == 403, headers
        assert client.delete(f"/api/uploads/{uid}", headers=headers).status_code == 403
    assert [u["upload_id"] for u in client.get("/api/uploads").json()] == [uid]
    assert client.get(f"/api/uploads/{uid}").json()["head"] == head_before


def test_the_servers_own_page_and_plain_clients_may_change_state(client):
    uid = upload(client)
    own = [{"Origin": LOCAL, "Sec-Fetch-Site": "same-origin"}, {"Origin": "http://127.0.0.1:80"},
           {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {}]
    for headers in own:
        r = client.post(f"/api/uploads/{uid}/undo", headers=headers)
        assert r.status_code == 409 and r.json()["message"].startswith("nothing to undo"), (headers, r.text)
    # reading is not state-changing: a foreign Origin on GET is answered (the browser keeps the answer from
    # the foreign page: no CORS header is ever sent)
    r = client.get("/api/uploads", headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_check_request_compares_scheme_host_and_port():
    hosts = HostPolicy()
    check_request("POST", {"host": "localhost:8000", "origin": "http://localhost:8000"}, "http", hosts)
    for origin in ("http://localhost:8001", "http://127.0.0.1:8000", "https://localhost:8000", "http://localhost"):
        with pytest.raises(Exception, match="own page"):
            check_request("POST", {"host": "localhost:8000", "origin": origin}, "http", hosts)


# ------------------------------------------------------------------------------------------ content type


@pytest.mark.parametrize("ctype,status", [("audio/midi", 201), ("audio/midi; charset=binary", 201),
                                          ("AUDIO/X-MIDI", 201), ("application/octet-stream", 201),
                                          ("text/plain", 415), ("application/x-www-form-urlencoded", 415),
                                          ("multipart/form-data; boundary=x", 415), (None, 415)])
def test_uploads_need_a_midi_or_octet_stream_type(client, ctype, status):
    headers = {"Content-Type": ctype} if ctype else {}
    r = client.post("/api/uploads?filename=s.mid", content=SONG.read_bytes(), headers=headers)
    assert r.status_code == status, (ctype, r.text)
    if status == 415:
        assert r.json()["error"] == "MediaTypeError" and r.json()["argument"] == "Content-Type"
        assert "audio/midi" in r.json()["fix"]


# ------------------------------------------------------------------------------------------------ headers


def test_every_answer_carries_the_security_headers(client):
    answers = [client.get("/"), client.get("/static/app.js"), client.get("/api/health"),
               client.get("/api/uploads/nope-nope-nope-nope"), client.get("/docs"), client.get("/openapi.json"),
               TestClient(client.app, base_url=LOCAL).get("/", headers={"Host": "evil.example"})]
    for r in answers:
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "object-src 'none'" in csp
        assert "unsafe-eval" not in csp and "script-src 'self' 'unsafe-inline'" not in csp
        assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "no-referrer"
    page = client.get("/").headers["content-security-policy"]
    assert "style-src 'self';" in page and "connect-src 'self'" in page


def test_head_of_the_page(client):
    r = client.head("/")
    assert r.status_code == 200 and r.content == b"" and r.headers["content-type"].startswith("text/html")
    assert int(r.headers["content-length"]) > 1000


def test_docs_work_offline(client):
    r = client.get("/docs")
    assert r.status_code == 200
    assert "/docs-assets/swagger-ui-bundle.js" in r.text and "/static/docs.js" in r.text
    assert "http://" not in r.text and "https://" not in r.text and "<script>" not in r.text
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css", "/static/docs.js"):
        a = client.get(asset)
        assert a.status_code == 200 and len(a.content) > 100, asset
    assert "/openapi.json" in client.get("/static/docs.js").text
    assert client.head("/docs").status_code == 200
    assert client.get("/redoc").status_code == 404  # ReDoc would load from a CDN: not offered


def test_docs_without_swagger_files_list_the_routes(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(app_module, "swagger_assets", lambda: None)
    c = TestClient(create_app(tmp_path / "data", tiny_model_dir, threads=1), base_url=LOCAL)
    r = c.get("/docs")
    assert r.status_code == 200 and 'href="/openapi.json"' in r.text and "/api/uploads/{upload_id}/infill" in r.text
    assert "<script" not in r.text and "https://" not in r.text
    assert c.get("/docs-assets/swagger-ui.css").status_code == 404
