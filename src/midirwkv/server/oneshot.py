"""One request for DAW scripts: a MIDI file plus track, bars and controls -> an infill job (``POST
/api/oneshot/infill``).

The body is the MIDI file (``Content-Type: audio/midi``), the rest is in the query, with the controls of the
``midirwkv infill`` command (applied to every bar; the others measured from the original bars, or free), or
per-bar controls as JSON (``controls``). The
request uploads the file, queues the job and, with ``wait``, answers when the job is done (at most ``wait``
seconds). The answer names the session (a new one when the request sent no token), the upload and the job,
whose variations are fetched with ``GET`` on each ``midi_url`` (send the session in ``X-Midirwkv-Session``).

The controls format (:func:`bar_controls`) is also what ``midirwkv daw infill --controls FILE`` reads; this
module's top level needs neither FastAPI nor pydantic, so the DAW client uses it without the server's extras.
"""

import asyncio
import json
import secrets
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

from midirwkv.errors import BadMidiError, BadRequestError, MidiRwkvError
from midirwkv.infer.requests import check_bars_in_file
from midirwkv.music.controls import DENSITY_MAX, POLY_RANGE

if TYPE_CHECKING:
    from fastapi import FastAPI

MAX_WAIT_S = 600.0
"""Longest ``wait`` a request may ask for (a client polls the job after that)."""
POLL_S = 0.1
CONTROL_KEYS = ("density", "polyphony", "durations")

def bar_controls(items: object, n_bars: int, argument: str = "controls") -> list:
    """``music.controls.BarControls`` per bar from plain values, the format of ``midirwkv daw infill
    --controls FILE`` and of the one-request endpoint's ``controls``: a list with one object per bar,
    ``{"density": 0..18, "polyphony": "MIN-MAX" or N, "durations": "quarter,eighth" or "none"}``; a key
    missing or null leaves that control free."""
    from midirwkv.infer.requests import DURATION_NAMES, parse_durations, parse_int_range
    from midirwkv.music.controls import BarControls

    if not isinstance(items, list) or len(items) != n_bars:
        raise BadRequestError("one controls object per bar is needed", argument=argument,
                              value=len(items) if isinstance(items, list) else type(items).__name__,
                              fix=f"give a list of {n_bars} objects like " + '{"density": 6, "polyphony": "1-2", '
                                  '"durations": "quarter,eighth"}')
    out = []
    for i, item in enumerate(items):
        where = f"{argument}[{i}]"
        if not isinstance(item, dict) or set(item) - set(CONTROL_KEYS):
            raise BadRequestError("a bar's controls are an object with density, polyphony, durations",
                                  argument=where, value=item, fix='e.g. {"density": 6, "polyphony": "1-2"}')
        values: dict = {}
        density = item.get("density")
        if density is not None:
            if not isinstance(density, int) or isinstance(density, bool) or not 0 <= density <= DENSITY_MAX:
                raise BadRequestError(f"density must be 0..{DENSITY_MAX} ({DENSITY_MAX} means that many or more)",
                                      argument=where, value=density, fix="e.g. 6")
            values["density"] = density
        if item.get("polyphony") is not None:
            values["poly_min"], values["poly_max"] = parse_int_range(item["polyphony"], where, *POLY_RANGE)
        if item.get("durations") is not None:
            wanted = parse_durations(item["durations"], where)
            values.update({f"dur_{name}": name in wanted for name in DURATION_NAMES})
        out.append(BarControls(**values))
    return out



def _controls(info_track, first_bar: int, last_bar: int, *, density, polyphony, durations, free: bool,
              per_bar: str | None):
    """Per-bar controls as the job stores them, or None for the measured ones (nothing given)."""
    from midirwkv.infer.requests import apply_overrides
    from midirwkv.music.controls import BarControls

    if per_bar is not None:
        if free or density is not None or polyphony is not None or durations is not None:
            raise BadRequestError("give controls (per bar) or the controls for every bar, not both",
                                  argument="controls", value=per_bar[:80],
                                  fix="put every value in the per-bar controls")
        try:
            items = json.loads(per_bar)
        except ValueError:
            raise BadRequestError("controls is not JSON", argument="controls", value=per_bar[:80],
                                  fix='e.g. [{"density": 6, "polyphony": "1-2", "durations": "quarter"}]') from None
        return [asdict(c) for c in bar_controls(items, last_bar - first_bar + 1)]
    if not free and density is None and polyphony is None and durations is None:
        return None
    out = []
    for bar in range(first_bar - 1, last_bar):
        base = BarControls() if free else info_track.controls[bar]
        out.append(asdict(apply_overrides(base, density=density, polyphony=polyphony, durations=durations,
                                          is_drum=info_track.is_drum)))
    return out


def register_oneshot(app: "FastAPI", *, max_upload_bytes: int, job_out: Callable[[dict], dict],
                     check_midi: Callable, error: Callable, session_header: str, session_cookie: str) -> None:
    """Add ``POST /api/oneshot/infill`` to an app made by ``server.app.create_app``: it uses the app's storage,
    jobs and engine (``app.state``) and, from ``create_app``, how a job is answered (``job_out``), how an
    upload is checked (``check_midi``), the error body (``error``) and where the session token travels."""
    from fastapi import Query, Request
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field

    from midirwkv.server import schemas as S
    from midirwkv.server.security import upload_content_type
    from midirwkv.server.storage import UnauthorizedError

    class OneShotOut(BaseModel):
        """The session to send back, the stored upload and the job (final when it finished within ``wait``)."""

        session: str = Field(description="send back as the X-Midirwkv-Session header to poll and fetch")
        upload_id: str
        track_name: str = Field(description="name of the regenerated track in the file")
        job: S.JobOut

    storage, jobs, engine = app.state.storage, app.state.jobs, app.state.engine
    errors = {code: {"model": S.ErrorBody} for code in (400, 401, 403, 404, 409, 413, 415, 422, 429)}

    def session_for(request: Request) -> tuple[str, str]:
        """(token, session key): the request's valid token, else a new session."""
        token = request.headers.get(session_header) or request.cookies.get(session_cookie)
        if token:
            try:
                return token, storage.resolve(token)
            except UnauthorizedError:
                pass
        token = storage.new_session()
        return token, storage.resolve(token)

    def submit(session: str, data: bytes, filename: str, body: S.InfillIn, controls_args: dict) -> tuple[str, dict, str]:
        from midirwkv.music.infill import validate_request
        from midirwkv.music.remi import encode_score, load_score
        from midirwkv.server.jobs import infill_request, sample_config

        check_midi(data, engine.vocab)
        st = encode_score(load_score(data), engine.vocab)
        n_bars = len(st.bar_ticks) - 1
        check_bars_in_file(body.first_bar, body.last_bar, n_bars)
        track = st.track(body.track)
        request = body.model_dump()
        request["controls"] = _controls(track, body.first_bar, body.last_bar, **controls_args)
        request["seed"] = body.seed if body.seed is not None else secrets.randbelow(2**31 - 64)
        sample_config(request["sampling"])
        validate_request(st, infill_request(request))
        upload_id = storage.add_upload(session, data, filename)
        try:
            job = jobs.submit(session, upload_id, "infill", request, 0)
        except MidiRwkvError:
            storage.delete_upload(session, upload_id)      # a refused job leaves no upload behind
            raise
        return upload_id, job, track.name

    @app.post(
        "/api/oneshot/infill",
        response_model=OneShotOut,
        tags=["daw"],
        responses=errors | {202: {"model": OneShotOut}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "audio/midi": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    )
    async def oneshot_infill(
        request: Request,
        track: int = Query(ge=0, description="Score index of the track (`midirwkv inspect`)"),
        first_bar: int = Query(ge=1, description="1-based"),
        last_bar: int = Query(ge=1, description="1-based, inclusive"),
        variations: int = Query(1, ge=1, le=16),
        seed: int | None = Query(None, ge=0, lt=2**31, description="variation k uses seed + k - 1"),
        context_bars: int = Query(16, ge=0, le=64),
        density: int | None = Query(None, ge=0, le=18, description="notes per bar, every bar (18 = 18+)"),
        polyphony: str | None = Query(None, max_length=8, description="notes starting together, e.g. 1-3"),
        durations: str | None = Query(None, max_length=80,
                                      description="note lengths that occur, e.g. quarter,eighth (or none)"),
        free_controls: bool = Query(False, description="controls not given are left free, not measured"),
        controls: str | None = Query(None, max_length=8000, description=(
            'per-bar controls instead, JSON: one object per bar, e.g. [{"density": 6, "polyphony": "1-2", '
            '"durations": "quarter,eighth"}, ...]; a key left out is free')),
        filename: str = Query("daw.mid", max_length=255),
        wait: float = Query(0, ge=0, le=MAX_WAIT_S, description="seconds to wait for the job to finish"),
    ) -> JSONResponse:
        """Upload a MIDI file (the body) and regenerate bars of one track in one request; with ``wait``, the
        answer comes when the job is done (200) or when ``wait`` runs out (202, poll the job)."""
        upload_content_type(request.headers.get("content-type"))
        data = bytearray()
        async for piece in request.stream():
            data.extend(piece)
            if len(data) > max_upload_bytes:
                return error(413, {"error": "PayloadTooLarge", "argument": "body",
                                    "message": f"the upload is over the limit of {max_upload_bytes} bytes",
                                    "fix": "send a smaller MIDI file (fewer bars or tracks)"})
        if not data:
            raise BadMidiError("the request body is empty", argument="body", value=0,
                               fix="send the bytes of a .mid file as the body")
        token, session = session_for(request)
        body = S.InfillIn(track=track, first_bar=first_bar, last_bar=last_bar, variations=variations, seed=seed,
                          context_bars=context_bars)
        controls_args = {"density": density, "polyphony": polyphony, "durations": durations, "free": free_controls,
                         "per_bar": controls}
        upload_id, job, track_name = await asyncio.to_thread(submit, session, bytes(data), filename, body,
                                                             controls_args)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while job["status"] not in S.JOB_FINAL and loop.time() < deadline and not await request.is_disconnected():
            await asyncio.sleep(POLL_S)
            job = await asyncio.to_thread(jobs.get, session, upload_id, job["job_id"])
        out = OneShotOut(session=token, upload_id=upload_id, track_name=track_name, job=job_out(job))
        return JSONResponse(status_code=200 if job["status"] in S.JOB_FINAL else 202, content=out.model_dump())
