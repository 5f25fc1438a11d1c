"""The local web server: an HTTP API over the engine and the web page that uses it (``midirwkv serve``).

Routes are thin: check the session, read or queue through :mod:`storage` and :mod:`jobs`, format the
answer with :mod:`schemas`. This module makes the app (middleware, error bodies, the session routes, the page
and /docs); the routes live in :mod:`routes_uploads`, :mod:`routes_jobs`, :mod:`live` and :mod:`oneshot`, each
registered with the app's objects (:class:`midirwkv.server.common.Context`). Every error midirwkv raises becomes a 4xx (or 5xx) JSON body
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
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from midirwkv.errors import MidiRwkvError
from midirwkv.server import schemas as S
from midirwkv.server.common import (
    MAX_UPLOAD_BYTES,
    SESSION_COOKIE,
    SESSION_HEADER,
    Context,
    Describer,
    check_midi,
    error_response,
    job_out,
)
from midirwkv.server.jobs import JobManager
from midirwkv.server.live import register_live
from midirwkv.server.oneshot import register_oneshot
from midirwkv.server.routes_jobs import register_jobs
from midirwkv.server.routes_uploads import register_uploads
from midirwkv.server.security import GuardMiddleware, HostPolicy
from midirwkv.server.storage import ServerLimits, Storage, UnauthorizedError

STATIC = Path(__file__).resolve().parent / "static"
CLEANUP_EVERY_S = 600.0
"""How often expired sessions are looked for while the server runs (also at start, and when the session
limit is reached)."""


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
    describer = Describer(engine.vocab)
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
        error_response=lambda exc: error_response(exc.http_status, exc.to_dict()),
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
        return error_response(exc.http_status, exc.to_dict())

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        msgs = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}"
            for e in exc.errors()[:5]
        )
        return error_response(
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
        return error_response(
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

    # ---------------------------------------------------------------------------------------- the routes
    ctx = Context(storage=storage, jobs=jobs, engine=engine, describer=describer, limits=limits, errors=errors,
                  session_of=session_of, max_upload_bytes=max_upload_bytes)
    register_uploads(app, ctx)          # routes_uploads.py: songs, versions, notes, accept, undo, redo
    register_jobs(app, ctx)             # routes_jobs.py: infill and add-track jobs, their events and variations
    register_live(app, storage=storage, engine=engine, session_of=session_of, errors=errors)   # live.py: loops
    register_oneshot(app, max_upload_bytes=max_upload_bytes, job_out=job_out, check_midi=check_midi,
                     error=error_response, session_header=SESSION_HEADER, session_cookie=SESSION_COOKIE)  # DAWs

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
