"""Upload routes: a song's versions, its notes, download, accept, undo and redo."""

from __future__ import annotations

import asyncio

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from midirwkv.errors import BadMidiError
from midirwkv.server import schemas as S
from midirwkv.server.common import (
    Context,
    check_midi,
    download_name,
    error_response,
    instrument_name,
)
from midirwkv.server.security import upload_content_type
from midirwkv.server.storage import check_token


def register_uploads(app: FastAPI, ctx: Context) -> None:
    """Add the routes to ``app`` (made by :func:`midirwkv.server.app.create_app`)."""
    storage, jobs, engine, describer = ctx.storage, ctx.jobs, ctx.engine, ctx.describer
    errors, session_of, max_upload_bytes = ctx.errors, ctx.session_of, ctx.max_upload_bytes

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
        info = await asyncio.to_thread(check_midi, data, engine.vocab)
        upload_id = await asyncio.to_thread(storage.add_upload, session, data, filename)
        describer.remember(storage.version_path(session, upload_id, None)[0], info)   # not encoded twice
        return await asyncio.to_thread(upload_out, session, upload_id, None)

    def _too_large(size: int) -> JSONResponse:
        return error_response(
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
            path, media_type="audio/midi", filename=download_name(meta["filename"], f"v{number}")
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
