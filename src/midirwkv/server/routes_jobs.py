"""Job routes: infill and add-track requests, more variations, job state and its event stream, variations as MIDI and notes."""

from __future__ import annotations

import asyncio
import json
import secrets

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, StreamingResponse

from midirwkv.errors import BadRequestError
from midirwkv.infer.requests import check_bars_in_file
from midirwkv.server import schemas as S
from midirwkv.server.common import (
    EVENT_MAX_S,
    EVENT_POLL_S,
    Context,
    download_name,
    job_out,
)
from midirwkv.server.jobs import sample_config
from midirwkv.server.storage import ConflictError


def register_jobs(app: FastAPI, ctx: Context) -> None:
    """Add the routes to ``app`` (made by :func:`midirwkv.server.app.create_app`)."""
    storage, jobs, engine, describer = ctx.storage, ctx.jobs, ctx.engine, ctx.describer
    errors, session_of = ctx.errors, ctx.session_of

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
        check_bars_in_file(body.first_bar, body.last_bar, info.n_bars)
        request = body.model_dump()
        request["seed"] = body.seed if body.seed is not None else secrets.randbelow(2**31 - 64)
        sample_config(request["sampling"])
        from midirwkv.music.infill import validate_request
        from midirwkv.server.jobs import infill_request

        # the track, the controls and the rest: the music layer's one check of an infill request
        validate_request(encode_score(load_score(path.read_bytes()), engine.vocab), infill_request(request))
        return job_out(jobs.submit(session, upload_id, "infill", request, version))

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
        return job_out(jobs.submit(session, upload_id, "add_track", request, version))

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
        return job_out(
            jobs.submit(session, upload_id, "more", request, parent["base_version"], parent_job=job_id)
        )

    @app.get("/api/uploads/{upload_id}/jobs", response_model=list[S.JobOut], tags=["jobs"], responses=errors)
    def list_jobs(upload_id: str, session: str = Depends(session_of)) -> list[dict]:
        """Every job of an upload with its variations (oldest first)."""
        return [job_out(j) for j in jobs.list(session, upload_id)]

    @app.get(
        "/api/uploads/{upload_id}/jobs/{job_id}", response_model=S.JobOut, tags=["jobs"], responses=errors
    )
    def get_job(upload_id: str, job_id: str, session: str = Depends(session_of)) -> dict:
        """A job's status, progress and finished variations (poll this, or use /events)."""
        return job_out(jobs.get(session, upload_id, job_id))

    @app.post(
        "/api/uploads/{upload_id}/jobs/{job_id}/cancel",
        response_model=S.JobOut,
        tags=["jobs"],
        responses=errors,
    )
    def cancel_job(upload_id: str, job_id: str, session: str = Depends(session_of)) -> dict:
        """Cancel a queued or running job (takes effect within one model step)."""
        return job_out(jobs.cancel(session, upload_id, job_id))

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
                job = job_out(await asyncio.to_thread(jobs.get, session, upload_id, job_id))
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
            filename=download_name(meta["filename"], f"{job_id[:6]}_var{variation}"),
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
