"""The local web server: an HTTP API over the engine and the web page that uses it (``midirwkv serve``).

Routes are thin: check the session, read or queue through :mod:`storage` and :mod:`jobs`, format the
answer with :mod:`schemas`. Every error midirwkv raises becomes a 4xx (or 5xx) JSON body
``{"error", "message", "argument", "fix"}``; so do validation errors and unknown routes.

Isolation: each browser (or API client) holds a random session token (cookie ``midirwkv_session`` or header
``X-Midirwkv-Session``); uploads, jobs and cached prompt states live under that session (a folder named by the
token's hash) and a request can only name ids inside its own session.

Trust (``security``): only loopback Host names are answered, state-changing requests from other pages are
refused, every answer carries nosniff and a Content-Security-Policy. Storage (``storage``): private files,
sessions that expire, quotas (``ServerLimits``).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from midirwkv.errors import BadMidiError, BadRequestError, MidiRwkvError
from midirwkv.music import gm
from midirwkv.server import schemas as S
from midirwkv.server.jobs import JobManager, sample_config
from midirwkv.server.security import GuardMiddleware, HostPolicy, upload_content_type
from midirwkv.server.storage import ConflictError, ServerLimits, Storage, UnauthorizedError, check_token

STATIC = Path(__file__).resolve().parent / "static"
SESSION_COOKIE = "midirwkv_session"
SESSION_HEADER = "X-Midirwkv-Session"
MAX_UPLOAD_BYTES = 4 * 1024 * 1024
"""Largest MIDI file accepted (a long multi-track song is well under 1 MB)."""
EVENT_POLL_S = 0.25
"""How often the server-sent event stream looks at a job."""
EVENT_MAX_S = 3600.0
"""A progress stream ends after this long (the client reconnects or polls)."""
CLEANUP_EVERY_S = 600.0
"""How often expired sessions are looked for while the server runs (also at start, and when the session
limit is reached)."""


def instrument_name(program: int, is_drum: bool) -> str:
    """The General MIDI instrument and program number (``"Trumpet (program 56)"``), ``"Drums"`` for drums."""
    if is_drum or program < 0:
        return gm.DRUMS
    return f"{gm.instrument_name(program, is_drum)} (program {program})"


class _Describer:
    """``music.inspect.describe`` and the note view of song files, memoised (version files never change)."""

    def __init__(self, vocab, size: int = 64):
        self.vocab = vocab
        self.size = size
        self._memo: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, kind: str, path: Path, make):
        key = (kind, str(path))
        with self._lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                return self._memo[key]
        value = make()
        with self._lock:
            self._memo[key] = value
            while len(self._memo) > self.size:
                self._memo.popitem(last=False)
        return value

    def describe(self, path: Path):
        from midirwkv.music.inspect import describe
        from midirwkv.music.remi import load_score

        return self._get("describe", path, lambda: describe(load_score(path.read_bytes()), self.vocab))

    def notes(self, path: Path) -> dict:
        return self._get("notes", path, lambda: self._notes(path))

    def _notes(self, path: Path) -> dict:
        from midirwkv.music.remi import bar_grid, load_score

        score = load_score(path.read_bytes())
        info = self.describe(path)
        bar_ticks, time_sigs = bar_grid(score)
        tempos = sorted((int(t.time), round(float(t.qpm), 3)) for t in score.tempos) or [(0, 120.0)]
        tracks = []
        for t in info.tracks:
            arr = score.tracks[t.index].notes.numpy()
            notes = [
                (int(a), int(b), int(c), int(d))
                for a, b, c, d in zip(arr["time"], arr["duration"], arr["pitch"], arr["velocity"])
            ]
            tracks.append(
                {
                    "index": t.index,
                    "name": t.name,
                    "program": t.program,
                    "is_drum": t.is_drum,
                    "instrument": instrument_name(t.program, t.is_drum),
                    "notes": notes,
                }
            )
        return {
            "tpq": int(score.ticks_per_quarter),
            "bar_ticks": [int(b) for b in bar_ticks],
            "time_sigs": [f"{a}/{b}" for a, b in time_sigs],
            "tempos": tempos,
            "tracks": tracks,
        }


def _error(status: int, body: dict) -> JSONResponse:
    return JSONResponse(status_code=status, content=S.ErrorBody(**body).model_dump())


def _job_out(job: dict) -> dict:
    base = f"/api/uploads/{job['upload_id']}/jobs/{job['job_id']}/variations"
    out = {k: v for k, v in job.items() if k in S.JobOut.model_fields}
    out["variations"] = [
        {
            "variation": v["variation"],
            "seed": v["seed"],
            "sampled_tokens": v["sampled_tokens"],
            "midi_url": f"{base}/{v['variation']}/midi",
            "bars": v["bars"],
            "track_controls": v.get("track_controls"),
        }
        for v in job["variations"]
    ]
    return out


def _download_name(filename: str, suffix: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", filename.rsplit(".", 1)[0])[:60].strip("._") or "song"
    return f"{stem}_{suffix}.mid"


def swagger_assets() -> Path | None:
    """The folder of Swagger UI's files shipped by the ``fastapi-offline`` package, or None when not installed."""
    try:
        from importlib.resources import files

        folder = Path(str(files("fastapi_offline") / "static"))
    except (ImportError, TypeError):
        return None
    ok = (folder / "swagger-ui-bundle.js").is_file() and (folder / "swagger-ui.css").is_file()
    return folder if ok else None


def create_app(
    data_dir: str | Path, model=None, *, max_upload_bytes: int = MAX_UPLOAD_BYTES, threads: int | None = None,
    int8: bool = False, limits: ServerLimits | None = None, allowed_hosts: tuple[str, ...] | list[str] = (),
) -> FastAPI:
    """The FastAPI app: API under ``/api``, the page at ``/``, the API's documentation at ``/docs``.

    ``model`` is a checkpoint folder, an already loaded ``infer.api.Engine``, or None for the shipped
    default model. ``data_dir`` holds every upload and result (created if missing, private to this user).
    ``int8``: decode with int8 weights (``infer.api.load_engine``). ``limits``: expiry and quotas (default
    ``ServerLimits.from_env()``). ``allowed_hosts``: Host names answered besides loopback ones (``serve`` adds
    the address it binds).
    """
    from midirwkv.infer.api import Engine, load_engine

    storage = Storage(data_dir, limits)
    engine = model if isinstance(model, Engine) else load_engine(model, threads=threads, int8=int8)
    jobs = JobManager(storage, engine)
    describer = _Describer(engine.vocab)
    limits = storage.limits

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        async def clean() -> None:
            while True:
                await asyncio.sleep(CLEANUP_EVERY_S)
                await asyncio.to_thread(storage.cleanup)

        task = asyncio.create_task(clean())
        yield
        task.cancel()
        jobs.close()

    app = FastAPI(
        title="midirwkv",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Controllable MIDI bar infilling with RWKV-7. Bars are 1-based and inclusive; "
        "tracks are Score indices. Send the session token from POST /api/session back in "
        f"the {SESSION_HEADER} header (browsers use the cookie).",
    )
    app.state.storage, app.state.jobs, app.state.engine = storage, jobs, engine
    app.add_middleware(
        GuardMiddleware,
        hosts=HostPolicy(allowed_hosts),
        error_response=lambda exc: _error(exc.http_status, exc.to_dict()),
    )
    errors = {
        400: {"model": S.ErrorBody},
        401: {"model": S.ErrorBody},
        403: {"model": S.ErrorBody},
        404: {"model": S.ErrorBody},
        409: {"model": S.ErrorBody},
        422: {"model": S.ErrorBody},
        429: {"model": S.ErrorBody},
    }

    # ---------------------------------------------------------------------------------------- errors
    @app.exception_handler(MidiRwkvError)
    async def on_midirwkv_error(_request: Request, exc: MidiRwkvError) -> JSONResponse:
        return _error(exc.http_status, exc.to_dict())

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        msgs = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}"
            for e in exc.errors()[:5]
        )
        return _error(
            422,
            {
                "error": "ValidationError",
                "message": f"invalid request: {msgs}",
                "argument": where,
                "fix": "see the request schema at /docs (or /openapi.json)",
            },
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(
            exc.status_code,
            {
                "error": "HTTPError",
                "message": str(exc.detail),
                "argument": None,
                "fix": "see /docs for the routes",
            },
        )

    # ---------------------------------------------------------------------------------------- session
    def session_of(request: Request) -> str:
        """The session key of the request's token (routes and storage never handle the token itself)."""
        token = request.headers.get(SESSION_HEADER) or request.cookies.get(SESSION_COOKIE)
        if not token:
            raise UnauthorizedError(
                "no session token",
                argument="session",
                value=None,
                fix=f"call POST /api/session and send the token in the {SESSION_HEADER} header",
            )
        return storage.resolve(token)

    @app.post("/api/session", response_model=S.SessionOut, tags=["session"], responses=errors)
    def open_session(request: Request, response: Response) -> dict:
        """Return the caller's valid session, or start a new one (also set as an HttpOnly cookie).

        A session unused for ``session_days`` (default 7) is deleted with its files."""
        token = request.headers.get(SESSION_HEADER) or request.cookies.get(SESSION_COOKIE)
        try:
            storage.resolve(token)
        except UnauthorizedError:
            token = storage.new_session()
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict",
                            max_age=int(limits.session_s))
        return {"session": token}

    @app.get("/api/health", tags=["session"])
    def health() -> dict:
        """Liveness and the loaded model."""
        cfg = getattr(engine.model, "cfg", None)
        return {
            "ok": True,
            "model": str(engine.path) if engine.path else "in-memory",
            "n_layer": getattr(cfg, "n_layer", None),
            "n_embd": getattr(cfg, "n_embd", None),
            "recovered_jobs": jobs.recovered,
            **jobs.stats,
        }

    @app.get("/api/defaults", response_model=S.DefaultsOut, tags=["session"])
    def defaults() -> dict:
        """The sampling defaults (``SampleConfig``'s) and the ranges the request schema accepts."""
        return S.sampling_defaults()

    # ---------------------------------------------------------------------------------------- uploads
    def upload_out(session: str, upload_id: str, version: int | None) -> dict:
        meta = storage.upload_meta(session, upload_id)
        path, number = storage.version_path(session, upload_id, version)
        info = describer.describe(path)
        versions = []
        for i, v in enumerate(meta["versions"]):
            src = v["source"]
            text = src if isinstance(src, str) else f"job {src['job_id']} variation {src['variation']}"
            versions.append({"version": i, "source": text})
        return {
            "upload_id": upload_id,
            "filename": meta["filename"],
            "size": meta["size"],
            "version": number,
            "head": meta["head"],
            "versions": versions,
            "n_bars": info.n_bars,
            "tpq": info.tpq,
            "time_sigs": info.time_sigs,
            "tempos": info.tempos,
            "tracks": [
                {
                    "index": t.index,
                    "name": t.name,
                    "program": t.program,
                    "is_drum": t.is_drum,
                    "instrument": instrument_name(t.program, t.is_drum),
                    "n_notes": t.n_notes,
                    "bars_with_notes": t.bars_with_notes,
                }
                for t in info.tracks
            ],
            "controls": {str(k): v for k, v in info.controls.items()},
        }

    @app.post(
        "/api/uploads",
        response_model=S.UploadOut,
        status_code=201,
        responses=errors | {413: {"model": S.ErrorBody}, 415: {"model": S.ErrorBody}},
        tags=["uploads"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "audio/midi": {"schema": {"type": "string", "format": "binary"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def upload(
        request: Request,
        filename: str = Query("upload.mid", max_length=255),
        session: str = Depends(session_of),
    ) -> dict:
        """Upload a Standard MIDI File as the raw request body, ``Content-Type: audio/midi`` (or
        ``application/octet-stream``); limit: ``max_upload_bytes``."""
        upload_content_type(request.headers.get("content-type"))
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
            return _too_large(int(declared))
        data = bytearray()
        async for chunk in request.stream():
            data.extend(chunk)
            if len(data) > max_upload_bytes:
                return _too_large(len(data))
        data = bytes(data)
        if not data:
            raise BadMidiError(
                "the request body is empty",
                argument="body",
                value=0,
                fix="send the bytes of a .mid file as the body",
            )
        # parse (and tokenise) before anything is stored: a file the engine cannot read is refused now
        await asyncio.to_thread(_check_midi, data, engine.vocab)
        upload_id = await asyncio.to_thread(storage.add_upload, session, data, filename)
        return await asyncio.to_thread(upload_out, session, upload_id, None)

    def _too_large(size: int) -> JSONResponse:
        return _error(
            413,
            {
                "error": "PayloadTooLarge",
                "argument": "body",
                "message": f"the upload is {size} bytes; the limit is {max_upload_bytes}",
                "fix": "send a smaller MIDI file (split long files, or drop unused tracks)",
            },
        )

    @app.get("/api/uploads", response_model=list[S.UploadSummary], tags=["uploads"], responses=errors)
    def list_uploads(session: str = Depends(session_of)) -> list[dict]:
        """This session's uploads, oldest first."""
        return [
            {"upload_id": uid, "filename": m["filename"], "size": m["size"], "head": m["head"]}
            for uid, m in storage.list_uploads(session)
        ]

    @app.delete("/api/uploads/{upload_id}", status_code=204, tags=["uploads"], responses=errors)
    def delete_upload(upload_id: str, session: str = Depends(session_of)) -> Response:
        """Delete an upload with its versions and jobs (refused while one of its jobs is queued or running)."""
        storage.upload_dir(session, upload_id)
        jobs.forget_upload(session, upload_id)
        storage.delete_upload(session, upload_id)
        return Response(status_code=204)

    @app.get("/api/uploads/{upload_id}", response_model=S.UploadOut, tags=["uploads"], responses=errors)
    def inspect_upload(
        upload_id: str, version: int | None = Query(None, ge=0), session: str = Depends(session_of)
    ) -> dict:
        """Tracks, bars, meters, tempi and the measured per-bar controls of a version (default: current)."""
        return upload_out(session, upload_id, version)

    @app.get("/api/uploads/{upload_id}/notes", response_model=S.NotesOut, tags=["uploads"], responses=errors)
    def upload_notes(
        upload_id: str, version: int | None = Query(None, ge=0), session: str = Depends(session_of)
    ) -> dict:
        """The notes of every track, bar lines and tempi (for the piano roll and the browser synthesizer)."""
        path, _ = storage.version_path(session, upload_id, version)
        return describer.notes(path)

    @app.get(
        "/api/uploads/{upload_id}/midi",
        tags=["uploads"],
        responses=errors | {200: {"content": {"audio/midi": {}}}},
    )
    def download(
        upload_id: str, version: int | None = Query(None, ge=0), session: str = Depends(session_of)
    ) -> FileResponse:
        """The song as a MIDI file (default: the current version)."""
        meta = storage.upload_meta(session, upload_id)
        path, number = storage.version_path(session, upload_id, version)
        return FileResponse(
            path, media_type="audio/midi", filename=_download_name(meta["filename"], f"v{number}")
        )

    @app.post(
        "/api/uploads/{upload_id}/accept", response_model=S.UploadOut, tags=["uploads"], responses=errors
    )
    def accept(upload_id: str, body: S.AcceptIn, session: str = Depends(session_of)) -> dict:
        """Make a finished variation the song's new current version (undo goes back)."""
        job = jobs.get(session, upload_id, check_token(body.job_id, "job_id"))
        path = jobs.variation_path(session, upload_id, body.job_id, body.variation)
        storage.push_version(
            session,
            upload_id,
            path.read_bytes(),
            {"job_id": body.job_id, "variation": body.variation},
            expect_head=job["base_version"],
        )
        return upload_out(session, upload_id, None)

    @app.post("/api/uploads/{upload_id}/undo", response_model=S.UploadOut, tags=["uploads"], responses=errors)
    def undo(upload_id: str, session: str = Depends(session_of)) -> dict:
        """Go back one version."""
        storage.move_head(session, upload_id, -1)
        return upload_out(session, upload_id, None)

    @app.post("/api/uploads/{upload_id}/redo", response_model=S.UploadOut, tags=["uploads"], responses=errors)
    def redo(upload_id: str, session: str = Depends(session_of)) -> dict:
        """Go forward one version (after an undo)."""
        storage.move_head(session, upload_id, +1)
        return upload_out(session, upload_id, None)

    # ---------------------------------------------------------------------------------------- jobs
    @app.post(
        "/api/uploads/{upload_id}/infill",
        response_model=S.JobOut,
        status_code=202,
        tags=["jobs"],
        responses=errors,
    )
    def request_infill(upload_id: str, body: S.InfillIn, session: str = Depends(session_of)) -> dict:
        """Queue the regeneration of bars ``first_bar..last_bar`` of one track; poll the job or its events."""
        from midirwkv.music.remi import encode_score, load_score

        path, version = storage.version_path(session, upload_id, body.version)
        info = describer.describe(path)
        if body.last_bar < body.first_bar:
            raise BadRequestError(
                "last_bar comes before first_bar",
                argument="last_bar",
                value=(body.first_bar, body.last_bar),
                fix="use first_bar <= last_bar",
            )
        if body.last_bar > info.n_bars:
            raise BadRequestError(
                "bars beyond the end of the song",
                argument="last_bar",
                value=body.last_bar,
                fix=f"the song has bars 1-{info.n_bars}",
            )
        if body.track not in {t.index for t in info.tracks}:
            raise BadRequestError(
                "no track with notes at that index",
                argument="track",
                value=body.track,
                fix=f"use one of {[t.index for t in info.tracks]}",
            )
        n = body.last_bar - body.first_bar + 1
        if body.controls is not None and len(body.controls) != n:
            raise BadRequestError(
                "one controls entry per selected bar is needed",
                argument="controls",
                value=len(body.controls),
                fix=f"give {n} entries (or null for the measured ones)",
            )
        request = body.model_dump()
        request["seed"] = body.seed if body.seed is not None else secrets.randbelow(2**31 - 64)
        sample_config(request["sampling"])
        from midirwkv.music.infill import validate_request
        from midirwkv.server.jobs import infill_request

        validate_request(encode_score(load_score(path.read_bytes()), engine.vocab), infill_request(request))
        return _job_out(jobs.submit(session, upload_id, "infill", request, version))

    @app.post(
        "/api/uploads/{upload_id}/add-track",
        response_model=S.JobOut,
        status_code=202,
        tags=["jobs"],
        responses=errors,
    )
    def request_add_track(upload_id: str, body: S.AddTrackIn, session: str = Depends(session_of)) -> dict:
        """Queue writing a whole track: a new instrument (``program``) or an existing track (``regenerate``)."""
        from midirwkv.music.infill import build_track_prompt
        from midirwkv.music.remi import encode_score, load_score
        from midirwkv.server.jobs import track_request

        if (body.program is None) == (body.regenerate is None):
            raise BadRequestError(
                "give either program (a new track) or regenerate (an existing track)",
                argument="program" if body.program is None else "regenerate",
                value=(body.program, body.regenerate),
                fix='e.g. {"program": 33} for a bass, {"program": -1} for drums, {"regenerate": 1}',
            )
        path, version = storage.version_path(session, upload_id, body.version)
        request = body.model_dump()
        request["seed"] = body.seed if body.seed is not None else secrets.randbelow(2**31 - 64)
        sample_config(request["sampling"])
        st = encode_score(load_score(path.read_bytes()), engine.vocab)
        req, _, _ = track_request(st, request, engine.vocab)
        build_track_prompt(engine.vocab, st, req)  # the token budget, before anything is queued
        return _job_out(jobs.submit(session, upload_id, "add_track", request, version))

    @app.post(
        "/api/uploads/{upload_id}/jobs/{job_id}/more",
        response_model=S.JobOut,
        status_code=202,
        tags=["jobs"],
        responses=errors,
    )
    def more_variations(
        upload_id: str, job_id: str, body: S.MoreIn, session: str = Depends(session_of)
    ) -> dict:
        """More variations of an infill or add-track job from its cached prompt state (only the new tokens)."""
        parent = jobs.get(session, upload_id, job_id)
        if parent["kind"] not in ("infill", "add_track", "more"):
            raise ConflictError(
                "only infill and add-track jobs have more variations",
                argument="job_id",
                value=job_id,
                fix="pick an infill or add-track job",
            )
        root = parent["request"].get("root_job", job_id)
        request = {k: v for k, v in parent["request"].items() if k not in ("seed", "variations")}
        request.update(
            root_job=root,
            variations=body.variations,
            seed=body.seed if body.seed is not None else secrets.randbelow(2**31 - 64),
        )
        if body.sampling is not None:
            request["sampling"] = body.sampling.model_dump()
        sample_config(request["sampling"])
        return _job_out(
            jobs.submit(session, upload_id, "more", request, parent["base_version"], parent_job=job_id)
        )

    @app.get("/api/uploads/{upload_id}/jobs", response_model=list[S.JobOut], tags=["jobs"], responses=errors)
    def list_jobs(upload_id: str, session: str = Depends(session_of)) -> list[dict]:
        """Every job of an upload with its variations (oldest first)."""
        return [_job_out(j) for j in jobs.list(session, upload_id)]

    @app.get(
        "/api/uploads/{upload_id}/jobs/{job_id}", response_model=S.JobOut, tags=["jobs"], responses=errors
    )
    def get_job(upload_id: str, job_id: str, session: str = Depends(session_of)) -> dict:
        """A job's status, progress and finished variations (poll this, or use /events)."""
        return _job_out(jobs.get(session, upload_id, job_id))

    @app.post(
        "/api/uploads/{upload_id}/jobs/{job_id}/cancel",
        response_model=S.JobOut,
        tags=["jobs"],
        responses=errors,
    )
    def cancel_job(upload_id: str, job_id: str, session: str = Depends(session_of)) -> dict:
        """Cancel a queued or running job (takes effect within one model step)."""
        return _job_out(jobs.cancel(session, upload_id, job_id))

    @app.get(
        "/api/uploads/{upload_id}/jobs/{job_id}/events",
        tags=["jobs"],
        responses=errors | {200: {"content": {"text/event-stream": {}}}},
    )
    async def job_events(
        upload_id: str, job_id: str, request: Request, session: str = Depends(session_of)
    ) -> StreamingResponse:
        """Server-sent events: one ``job`` event (a JobOut) per change, the last one when the job ends."""
        jobs.get(session, upload_id, job_id)

        async def stream():
            last = None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + EVENT_MAX_S
            while loop.time() < deadline and not await request.is_disconnected():
                job = _job_out(await asyncio.to_thread(jobs.get, session, upload_id, job_id))
                text = json.dumps(job)
                if text != last:
                    last = text
                    yield f"event: job\ndata: {text}\n\n"
                if job["status"] in S.JOB_FINAL:
                    return
                await asyncio.sleep(EVENT_POLL_S)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get(
        "/api/uploads/{upload_id}/jobs/{job_id}/variations/{variation}/midi",
        tags=["jobs"],
        responses=errors | {200: {"content": {"audio/midi": {}}}},
    )
    def variation_midi(upload_id: str, job_id: str, variation: int, session: str = Depends(session_of)):
        """One variation as a whole MIDI file (the song with the span replaced)."""
        meta = storage.upload_meta(session, upload_id)
        path = jobs.variation_path(session, upload_id, job_id, variation)
        return FileResponse(
            path,
            media_type="audio/midi",
            filename=_download_name(meta["filename"], f"{job_id[:6]}_var{variation}"),
        )

    @app.get(
        "/api/uploads/{upload_id}/jobs/{job_id}/variations/{variation}/notes",
        response_model=S.NotesOut,
        tags=["jobs"],
        responses=errors,
    )
    def variation_notes(
        upload_id: str, job_id: str, variation: int, session: str = Depends(session_of)
    ) -> dict:
        """A variation's notes (the same view as the song's)."""
        return describer.notes(jobs.variation_path(session, upload_id, job_id, variation))

    from midirwkv.server.live import register_live  # the live loop and streamed variations (issue 20)

    register_live(app, storage=storage, engine=engine, session_of=session_of, errors=errors)

    from midirwkv.server.oneshot import register_oneshot  # one request for DAW scripts (issue 21)
    register_oneshot(app, max_upload_bytes=max_upload_bytes, job_out=_job_out, check_midi=_check_midi, error=_error,
                     session_header=SESSION_HEADER, session_cookie=SESSION_COOKIE)

    # ---------------------------------------------------------------------------------------- page
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    assets = swagger_assets()
    if assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.api_route("/docs", methods=["GET", "HEAD"], include_in_schema=False)
    def docs() -> Response:
        """Swagger UI from local files (the ``fastapi-offline`` package ships them), else a plain local page
        listing the routes and linking the OpenAPI schema; nothing is fetched from the internet."""
        if assets is not None:
            return FileResponse(STATIC / "docs.html", media_type="text/html")
        return HTMLResponse(_plain_docs(app.openapi()))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _plain_docs(spec: dict) -> str:
    """A minimal API page (when Swagger UI's files are not installed): every route and the schema's link."""
    from html import escape

    rows = []
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            rows.append(f"<tr><td><code>{escape(method.upper())}</code></td><td><code>{escape(path)}</code></td>"
                        f"<td>{escape(op.get('summary', ''))}</td></tr>")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>midirwkv API</title>'
        '<link rel="stylesheet" href="/static/style.css"></head><body><main class="docs">'
        f"<h1>{escape(spec.get('info', {}).get('title', 'API'))} API</h1>"
        '<p>The full schema: <a href="/openapi.json">/openapi.json</a>. For the interactive page, install '
        "<code>fastapi-offline</code> (it ships Swagger UI's files).</p>"
        f"<table><thead><tr><th>method</th><th>path</th><th>summary</th></tr></thead><tbody>{''.join(rows)}"
        "</tbody></table></main></body></html>"
    )


def _check_midi(data: bytes, vocab) -> None:
    """Parse and tokenise uploaded bytes (BadMidiError / BadRequestError when the engine cannot use them)."""
    from midirwkv.music.remi import encode_score, load_score

    st = encode_score(load_score(data), vocab)
    if not st.tracks:
        raise BadMidiError(
            "no track has notes the model can read",
            argument="body",
            value=None,
            fix="upload a file with pitched or drum notes in the piano range",
        )


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    data_dir: str | Path = "midirwkv-data",
    model_dir: str | Path | None = None,
    *,
    threads: int | None = None,
    int8: bool = False,
) -> None:
    """Load the model once and serve the API and the page until interrupted (``midirwkv serve``)."""
    import uvicorn

    app = create_app(data_dir, model_dir, threads=threads, int8=int8, allowed_hosts=(host,))
    uvicorn.run(app, host=host, port=port, log_level="info")
