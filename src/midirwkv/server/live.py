"""Live loop and streamed variations: the HTTP side of ``infer.stream.LoopSession`` (issue 20).

A *loop* is one span of one track of a song version with its prompt read once (the prefix-state cache:
the state after ``FillBar_Start``, which holds no control of the span). Each ``next`` call samples one more
variation of the span from that state, so a pass costs only the span's own tokens; controls and sampling
changed between calls apply from the next variation on. Loops live in memory (not on disk): at most
``MAX_LOOPS`` in all and ``MAX_LOOPS_PER_SESSION`` per session (the least recently used goes), and a loop
unused for ``LOOP_IDLE_S`` is dropped. A loop belongs to the session that made it; ids are never shared.

Bars are 1-based and inclusive, tracks are Score indices, notes are ``[start tick, duration ticks, pitch,
velocity]`` in the song's ticks (as ``GET /api/uploads/{id}/notes``). Errors are the API's usual JSON body
``{"error", "message", "argument", "fix"}`` with a 4xx/5xx status.

Endpoints (``{u}`` = upload id, ``{l}`` = loop id; send the session header or cookie as everywhere):

``POST /api/uploads/{u}/loops`` body ``LoopIn``::

    {"track": 0, "first_bar": 17, "last_bar": 20, "controls": null | [BarControls x n_bars],
     "context_bars": 16, "sampling": {...SamplingIn...}, "seed": null | int, "version": null | int}

  reads the song version and its prompt (the only slow step), answers 201 ``LoopOut``::

    {"loop_id", "upload_id", "base_version", "track", "first_bar", "last_bar", "span_ticks": [t0, t1], "tpq",
     "prompt_tokens", "prefill_seconds", "seed", "passes": 0, "controls": [...asked now...],
     "measured": [...controls of the original bars...], "sampling": {...}, "recent": [pass numbers held],
     "job_id": null | id of the job holding kept variations}

``GET /api/uploads/{u}/loops/{l}``: the ``LoopOut``. ``DELETE`` it: 204, the state is freed.

``PATCH /api/uploads/{u}/loops/{l}`` body ``{"controls": ..., "sampling": ...}`` (either may be left out;
``"controls": null`` goes back to the measured controls, ``"sampling": null`` to the defaults): the settings
of the next variations (a variation being sampled keeps its own). Answers the ``LoopOut``.

``POST /api/uploads/{u}/loops/{l}/next`` body ``{"controls"?, "sampling"?, "seed"?}`` (optional; settings
given here are the PATCH's, seed overrides this pass's ``seed + pass - 1``): samples the next variation and
answers ``PassOut``::

    {"loop_id", "number": pass number (1, 2, ...), "seed", "sampled_tokens", "first_bar_seconds", "seconds",
     "total_seconds", "track", "first_bar", "last_bar", "span_ticks": [t0, t1],
     "notes": [[tick, dur, pitch, vel], ...]   the track's notes in the span, exactly what Accept writes,
     "bars": [{"bar", "asked", "achieved", "missed"}, ...], "sampling": {...}, "kept": null}

  ``seconds`` is the sampling time; the page compares it with the pass length to say it fell behind.

``GET /api/uploads/{u}/loops/{l}/next/events[?seed=N]``: the same next variation as Server-Sent Events (the
style of ``/jobs/{id}/events``; usable with ``EventSource``): one ``bar`` event per bar as soon as it is
sampled, ``data: {"loop_id", "number", "seed", "index" (0-based in the span), "bar" (1-based in the song),
"notes": [[tick, dur, pitch, vel], ...] (decoded, cut at the span's end), "last", "seconds"}``, then one
``pass`` event whose data is the ``PassOut`` (its notes are the final ones), and the stream ends. A failure
is one ``error`` event (data: the error body). A client that disconnects stops the sampling. A one-off
streamed infill is a loop made and streamed once.

``POST /api/uploads/{u}/loops/{l}/keep`` body ``{"number": n}`` (a pass still held, see ``recent``): writes
that variation as a variation of the loop's job (an ordinary ``infill`` job record, made at the first keep,
with ``request.loop_id``); answers ``KeepOut``::

    {"loop_id", "number", "job_id", "variation", "midi_url", "notes_url"}

  Keeping the same pass twice answers the same variation. **Accept** is the existing
  ``POST /api/uploads/{u}/accept {"job_id", "variation"}`` with those two values (undo/redo as usual); the
  kept variations also show in ``GET /api/uploads/{u}/jobs`` and their MIDI/notes routes work. After an
  accept the song's head has moved: make a new loop for the new version (a kept variation of the old loop
  can no longer be accepted, 409).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from midirwkv.errors import MidiRwkvError
from midirwkv.infer.requests import check_bars_in_file
from midirwkv.music.infill import CONTEXT_BARS
from midirwkv.server import schemas as S
from midirwkv.server.storage import NotFoundError, check_token, new_token

log = logging.getLogger("midirwkv.server")

MAX_LOOPS = 16
"""Loops held in memory at once, all sessions together (each is one batch-1 RNN state and a parsed song)."""
MAX_LOOPS_PER_SESSION = 4
"""Loops one session holds at once; making another drops its least recently used one."""
LOOP_IDLE_S = 1800.0
"""A loop unused this long is dropped."""
KEEP_PASSES = 16
"""Recent passes of a loop held for ``keep`` (older ones are dropped)."""


# ----------------------------------------------------------------------------------------------- schemas

class LoopIn(S._Strict):
    """Start a loop over bars ``first_bar..last_bar`` of one track."""

    track: int = Field(ge=0, description="Score index of the track")
    first_bar: int = Field(ge=1, description="1-based")
    last_bar: int = Field(ge=1, description="1-based, inclusive")
    controls: list[S.BarControlsModel] | None = Field(
        None, description="one per selected bar; null = the measured controls of the original bars")
    context_bars: int = Field(CONTEXT_BARS, ge=0, le=64)
    sampling: S.SamplingIn = Field(default_factory=S.SamplingIn)
    seed: int | None = Field(None, ge=0, lt=2**31, description="pass k uses seed + k - 1; null = random")
    version: int | None = Field(None, ge=0, description="song version to loop over; null = the current one")


class LoopSettingsIn(S._Strict):
    """Settings of the next variations; a field left out keeps its value (null: measured controls / defaults)."""

    controls: list[S.BarControlsModel] | None = None
    sampling: S.SamplingIn | None = None


class NextIn(LoopSettingsIn):
    """Optional settings for this and the next passes, and a seed for this pass only."""

    seed: int | None = Field(None, ge=0, lt=2**31, description="this pass's seed; null = loop seed + pass - 1")


class KeepIn(S._Strict):
    number: int = Field(ge=1, description="the pass to keep (PassOut.number)")


class LoopOut(BaseModel):
    loop_id: str
    upload_id: str
    base_version: int = Field(description="the song version looped over")
    track: int
    first_bar: int
    last_bar: int
    span_ticks: tuple[int, int] = Field(description="song ticks where the span starts and ends")
    tpq: int
    prompt_tokens: int
    prefill_seconds: float
    seed: int
    passes: int = Field(description="variations started so far")
    controls: list[S.BarControlsModel] = Field(description="asked from the next variation on")
    measured: list[S.BarControlsModel] = Field(description="the controls of the original bars")
    sampling: S.SamplingIn
    recent: list[int] = Field(description="pass numbers held for keep")
    job_id: str | None = Field(None, description="the job holding this loop's kept variations")


class KeptOut(BaseModel):
    job_id: str
    variation: int


class PassOut(BaseModel):
    loop_id: str
    number: int = Field(description="pass number, 1-based")
    seed: int
    sampled_tokens: int
    first_bar_seconds: float = Field(description="time to the first bar")
    seconds: float = Field(description="sampling time of the whole variation")
    total_seconds: float = Field(description="sampling, splice and report")
    track: int
    first_bar: int
    last_bar: int
    span_ticks: tuple[int, int]
    notes: list[tuple[int, int, int, int]] = Field(description="[start tick, duration ticks, pitch, velocity] of "
                                                               "the track's notes in the span")
    bars: list[S.BarReportOut]
    sampling: S.SamplingIn
    kept: KeptOut | None = None


class KeepOut(BaseModel):
    loop_id: str
    number: int
    job_id: str
    variation: int
    midi_url: str
    notes_url: str


# ----------------------------------------------------------------------------------------------- loops

@dataclass
class _Loop:
    loop_id: str
    session: str
    upload_id: str
    base_version: int
    loop: object                        # infer.stream.LoopSession
    sampling: dict                      # SamplingIn dump of the current settings
    request: dict                       # the LoopIn as started (for the kept variations' job record)
    lock: threading.Lock = field(default_factory=threading.Lock)        # one pass at a time
    keep_lock: threading.Lock = field(default_factory=threading.Lock)   # one keep at a time
    settings_lock: threading.Lock = field(default_factory=threading.Lock)   # controls and sampling change together
    used: float = field(default_factory=time.monotonic)
    passes: OrderedDict = field(default_factory=OrderedDict)   # number -> (LoopVariation, sampling dict)
    kept: dict = field(default_factory=dict)                   # number -> variation number in the job
    job_id: str | None = None


class LiveLoops:
    """The loops in memory, the lock that runs one live generation at a time, and the keep bookkeeping."""

    def __init__(self, storage, engine, *, max_loops: int = MAX_LOOPS,
                 max_per_session: int = MAX_LOOPS_PER_SESSION, idle_s: float = LOOP_IDLE_S):
        self.storage = storage
        self.engine = engine
        self.max_loops = max_loops
        self.max_per_session = max_per_session
        self.idle_s = idle_s
        self._loops: OrderedDict[str, _Loop] = OrderedDict()
        self._lock = threading.Lock()
        self.generate_lock = threading.Lock()
        """Held while a loop reads its prompt or samples: the model is one CPU resource."""

    # ------------------------------------------------------------------------------------------ registry
    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            for key in [k for k, v in self._loops.items() if now - v.used > self.idle_s]:
                del self._loops[key]

    def start(self, session: str, upload_id: str, body: LoopIn) -> _Loop:
        """Read the song version and its prompt; hold the new loop (dropping the least recently used)."""
        from midirwkv.infer.stream import LoopSession
        from midirwkv.music.controls import BarControls
        from midirwkv.server.jobs import sample_config

        if body.last_bar < body.first_bar:       # the file's end is checked when the loop reads it
            check_bars_in_file(body.first_bar, body.last_bar, body.last_bar)
        path, version = self.storage.version_path(session, upload_id, body.version)
        sampling = body.sampling.model_dump()
        controls = None if body.controls is None else [BarControls(**c.model_dump()) for c in body.controls]
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31 - 64)
        self._expire()
        with self.generate_lock:
            loop = LoopSession(path.read_bytes(), body.track, (body.first_bar, body.last_bar), controls=controls,
                               context=body.context_bars, seed=seed, sample=sample_config(sampling),
                               engine=self.engine)
        entry = _Loop(loop_id=new_token(), session=session, upload_id=upload_id, base_version=version,
                      loop=loop, sampling=sampling, request=body.model_dump() | {"seed": seed, "version": version})
        with self._lock:
            mine = [k for k, v in self._loops.items() if v.session == session]
            while len(mine) >= self.max_per_session:
                del self._loops[mine.pop(0)]
            while len(self._loops) >= self.max_loops:
                self._loops.popitem(last=False)
            self._loops[entry.loop_id] = entry
        return entry

    def get(self, session: str, upload_id: str, loop_id: str) -> _Loop:
        """The caller's loop (NotFoundError for another session's, an expired or an unknown one)."""
        self.storage.upload_dir(session, upload_id)             # the upload still exists
        self._expire()
        with self._lock:
            entry = self._loops.get(loop_id)
            if entry is None or entry.session != session or entry.upload_id != upload_id:
                raise NotFoundError("no such loop for this upload (it may have been idle too long or replaced)",
                                    argument="loop_id", value=loop_id,
                                    fix="start one with POST /api/uploads/{upload_id}/loops")
            entry.used = time.monotonic()
            self._loops.move_to_end(loop_id)
            return entry

    def drop(self, session: str, upload_id: str, loop_id: str) -> None:
        self.get(session, upload_id, loop_id)
        with self._lock:
            self._loops.pop(loop_id, None)

    # ------------------------------------------------------------------------------------------ settings
    @staticmethod
    def apply_settings(entry: _Loop, body: LoopSettingsIn) -> None:
        """Settings named in ``body`` for the next variations (checked before anything changes)."""
        from midirwkv.music.controls import BarControls
        from midirwkv.server.jobs import sample_config

        given = body.model_fields_set
        controls = cfg = sampling = None
        if "controls" in given and body.controls is not None:
            controls = entry.loop.check_controls([BarControls(**c.model_dump()) for c in body.controls])
        if "sampling" in given:
            sampling = (body.sampling or S.SamplingIn()).model_dump()
            cfg = sample_config(sampling)
        with entry.settings_lock:               # a pass starting now sees the old settings or the new, whole
            if "controls" in given:
                entry.loop.controls = controls if controls is not None else list(entry.loop.measured)
            if cfg is not None:
                entry.loop.set_sample(cfg)
                entry.sampling = sampling

    # ------------------------------------------------------------------------------------------ passes
    def run_pass(self, entry: _Loop, seed: int | None = None, on_bar=None, cancel: threading.Event | None = None
                 ) -> dict | None:
        """Sample the loop's next variation; ``on_bar(BarEvent)`` per bar; None when ``cancel`` was set."""
        with entry.lock, self.generate_lock:
            with entry.settings_lock:
                sampling = dict(entry.sampling)
                stream = entry.loop.stream(seed=seed)
            for event in stream:
                if cancel is not None and cancel.is_set():
                    stream.close()
                    return None
                if on_bar is not None:
                    on_bar(event)
            var = stream.result
            assert var is not None
            with self._lock:                    # loop_out reads the held passes from other threads
                entry.passes[var.number] = (var, sampling)
                while len(entry.passes) > KEEP_PASSES:
                    entry.passes.popitem(last=False)
                entry.used = time.monotonic()
        return self.pass_out(entry, var, sampling)

    def pass_out(self, entry: _Loop, var, sampling: dict) -> dict:
        loop = entry.loop
        kept = entry.kept.get(var.number)
        return {
            "loop_id": entry.loop_id, "number": var.number, "seed": var.seed, "sampled_tokens": var.sampled,
            "first_bar_seconds": round(var.first_bar_seconds, 4), "seconds": round(var.seconds, 4),
            "total_seconds": round(var.total_seconds, 4), "track": loop.track, "first_bar": loop.first_bar,
            "last_bar": loop.last_bar, "span_ticks": list(loop.span_ticks), "notes": [list(n) for n in var.notes],
            "bars": [r.to_dict() for r in var.reports], "sampling": sampling,
            "kept": None if kept is None else {"job_id": entry.job_id, "variation": kept},
        }

    def loop_out(self, entry: _Loop) -> dict:
        loop = entry.loop
        with self._lock:
            recent = list(entry.passes)
        return {
            "loop_id": entry.loop_id, "upload_id": entry.upload_id, "base_version": entry.base_version,
            "track": loop.track, "first_bar": loop.first_bar, "last_bar": loop.last_bar,
            "span_ticks": list(loop.span_ticks), "tpq": int(loop.st.tpq), "prompt_tokens": loop.prompt_tokens,
            "prefill_seconds": round(loop.prefill_seconds, 4), "seed": loop.seed, "passes": loop.passes,
            "controls": [c.to_dict() for c in loop.controls], "measured": [c.to_dict() for c in loop.measured],
            "sampling": entry.sampling, "recent": recent, "job_id": entry.job_id,
        }

    # ------------------------------------------------------------------------------------------ keep
    def keep(self, entry: _Loop, number: int) -> dict:
        """Write pass ``number`` as a variation of the loop's job (made at the first keep); KeepOut."""
        with entry.keep_lock:                   # not the sampling lock: keeping never waits for a pass
            with self._lock:
                held = entry.passes.get(number)
                recent = list(entry.passes)
            if held is None:
                raise NotFoundError("that pass is not held any more (or never was)", argument="number",
                                    value=number, fix=f"keep one of the recent passes {recent}")
            var, sampling = held
            if number not in entry.kept or not self._job_alive(entry):
                entry.kept[number] = self._write_kept(entry, var, sampling)
            variation = entry.kept[number]
        base = f"/api/uploads/{entry.upload_id}/jobs/{entry.job_id}/variations/{variation}"
        return {"loop_id": entry.loop_id, "number": number, "job_id": entry.job_id, "variation": variation,
                "midi_url": f"{base}/midi", "notes_url": f"{base}/notes"}

    def _job_alive(self, entry: _Loop) -> bool:
        if entry.job_id is None:
            return False
        try:
            self.storage.job_dir(entry.session, entry.upload_id, entry.job_id)
        except NotFoundError:
            return False
        return True

    def _write_kept(self, entry: _Loop, var, sampling: dict) -> int:
        """Append ``var`` to the loop's job record (a new ``infill`` job when there is none); its number."""
        from midirwkv.server.storage import read_json

        data = var.midi
        self.storage.check_space(entry.session, len(data), "this kept variation")
        if not self._job_alive(entry):
            entry.job_id, folder = self.storage.new_job_dir(entry.session, entry.upload_id)
            entry.kept.clear()
            now = time.time()
            request = dict(entry.request)
            controls = request.get("controls")
            job = {
                "job_id": entry.job_id, "upload_id": entry.upload_id, "kind": "infill", "status": "done",
                "progress": 1.0, "message": "live loop", "error": None, "base_version": entry.base_version,
                "parent_job": None,
                "request": {"track": request["track"], "first_bar": request["first_bar"],
                            "last_bar": request["last_bar"], "controls": controls,
                            "context_bars": request["context_bars"], "sampling": request["sampling"],
                            "variations": 0, "seed": request["seed"], "version": entry.base_version,
                            "loop_id": entry.loop_id},
                "created": now, "started": now, "finished": now, "variations": [],
            }
        else:
            folder = self.storage.job_dir(entry.session, entry.upload_id, entry.job_id)
            job = read_json(folder / "job.json")
        number = len(job["variations"]) + 1
        name = f"var_{number}.mid"
        self.storage.write_bytes(folder / name, data)
        job["variations"].append({"variation": number, "seed": var.seed, "sampled_tokens": var.sampled,
                                  "file": name, "bars": [r.to_dict() for r in var.reports],
                                  "loop_pass": var.number, "sampling": sampling})
        job["request"]["variations"] = number
        job["message"] = f"live loop: {number} kept variation{'s' if number > 1 else ''}"
        self.storage.write_json(folder / "job.json", job)
        return number


# ----------------------------------------------------------------------------------------------- routes

def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def register_live(app: FastAPI, *, storage, engine, session_of, errors: dict | None = None) -> LiveLoops:
    """Add the loop routes (module docstring) to ``app``; ``session_of`` is the app's session dependency.

    The loops sample with ``engine.model`` itself (not the job worker's watched model), one at a time.
    """
    loops = LiveLoops(storage, engine)
    app.state.loops = loops
    errors = errors or {}
    prefix = "/api/uploads/{upload_id}/loops"

    @app.post(prefix, response_model=LoopOut, status_code=201, tags=["live loop"], responses=errors)
    def start_loop(upload_id: str, body: LoopIn, session: str = Depends(session_of)) -> dict:
        """Start a loop over one track's bars: the prompt is read once; each ``next`` samples one variation."""
        return loops.loop_out(loops.start(session, upload_id, body))

    @app.get(prefix + "/{loop_id}", response_model=LoopOut, tags=["live loop"], responses=errors)
    def get_loop(upload_id: str, loop_id: str, session: str = Depends(session_of)) -> dict:
        """The loop's span, current settings and the passes held for keep."""
        return loops.loop_out(loops.get(session, upload_id, check_token(loop_id, "loop_id")))

    @app.patch(prefix + "/{loop_id}", response_model=LoopOut, tags=["live loop"], responses=errors)
    def set_loop(upload_id: str, loop_id: str, body: LoopSettingsIn, session: str = Depends(session_of)) -> dict:
        """Controls and sampling of the next variations (a field left out keeps its value)."""
        entry = loops.get(session, upload_id, check_token(loop_id, "loop_id"))
        loops.apply_settings(entry, body)
        return loops.loop_out(entry)

    @app.delete(prefix + "/{loop_id}", status_code=204, tags=["live loop"], responses=errors)
    def drop_loop(upload_id: str, loop_id: str, session: str = Depends(session_of)) -> Response:
        """Forget the loop and its state."""
        loops.drop(session, upload_id, check_token(loop_id, "loop_id"))
        return Response(status_code=204)

    @app.post(prefix + "/{loop_id}/next", response_model=PassOut, tags=["live loop"], responses=errors)
    def next_pass(upload_id: str, loop_id: str, body: NextIn | None = None,
                  session: str = Depends(session_of)) -> dict:
        """Sample the next variation from the cached prompt state (settings in the body apply from it on)."""
        entry = loops.get(session, upload_id, check_token(loop_id, "loop_id"))
        if body is not None:
            loops.apply_settings(entry, body)
        out = loops.run_pass(entry, seed=body.seed if body is not None else None)
        assert out is not None
        return out

    @app.get(prefix + "/{loop_id}/next/events", tags=["live loop"],
             responses=errors | {200: {"content": {"text/event-stream": {}}}})
    async def next_pass_events(upload_id: str, loop_id: str, request: Request,
                               seed: int | None = Query(None, ge=0, lt=2**31),
                               session: str = Depends(session_of)) -> StreamingResponse:
        """The next variation as server-sent events: ``bar`` per sampled bar, then ``pass`` (or ``error``)."""
        entry = await asyncio.to_thread(loops.get, session, upload_id, check_token(loop_id, "loop_id"))
        queue: asyncio.Queue = asyncio.Queue()
        running = asyncio.get_running_loop()
        cancel = threading.Event()

        def put(item) -> None:
            try:
                running.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:                # the event loop is gone (server stopping): nobody listens
                cancel.set()

        def work() -> None:
            try:
                out = loops.run_pass(entry, seed=seed, cancel=cancel, on_bar=lambda ev: put(("bar", {
                    "loop_id": entry.loop_id, "number": ev.variation, "seed": ev.seed, "index": ev.index,
                    "bar": ev.bar, "notes": [list(n) for n in ev.notes], "last": ev.last,
                    "seconds": round(ev.seconds, 4)})))
                put(("pass", out) if out is not None else None)
            except MidiRwkvError as exc:
                put(("error", exc.to_dict()))
            except Exception as exc:  # the stream must end with a readable event whatever went wrong
                log.exception("loop %s failed", entry.loop_id)
                put(("error", {"error": type(exc).__name__, "message": f"internal error: {exc}"[:500],
                               "argument": None, "fix": "report this with the request that caused it"}))

        async def stream():
            threading.Thread(target=work, name=f"midirwkv-loop-{entry.loop_id[:6]}", daemon=True).start()
            try:
                while True:
                    item = await queue.get()
                    if item is None:
                        return
                    kind, data = item
                    yield _sse(kind, data)
                    if kind in ("pass", "error"):
                        return
            finally:
                cancel.set()                    # a client gone before the end stops the sampling at its next bar

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.post(prefix + "/{loop_id}/keep", response_model=KeepOut, tags=["live loop"], responses=errors)
    def keep_pass(upload_id: str, loop_id: str, body: KeepIn, session: str = Depends(session_of)) -> dict:
        """Keep a recent pass as a variation of the loop's job; accept it with POST /api/uploads/{id}/accept."""
        return loops.keep(loops.get(session, upload_id, check_token(loop_id, "loop_id")), body.number)

    return loops
