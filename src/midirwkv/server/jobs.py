"""Generation jobs: one worker thread owns the model; requests wait in a FIFO queue.

The model is one CPU resource, so jobs run one at a time in a single worker thread and the HTTP handlers
only queue work and read its state. Every state change is written to ``job.json`` atomically, so a job's
request, status and finished variations survive a restart; at start-up a job that was queued or running
when the server stopped is marked failed with a message saying so (never dropped silently).

Progress and cancellation ride on the model calls: the engine's ``InfillSession`` is given a thin
wrapper of the model that counts decoding steps and raises :class:`JobCancelled` at the next step once a
job is cancelled, so cancelling takes effect within one token.

Add-track jobs run the same way with a ``TrackSession`` (the other tracks read once up to ``Infill_Track``).

"More variations" reuse the prompt state: the ``InfillSession`` of a finished infill job stays in a small
LRU cache keyed by (session, upload, job), so extra variations cost only the tokens of the span. The key
holds the session's key, so one user's cached state is never used for another user's request.

A job's variations are published batch by batch while it runs (a long job shows its first results early),
but the last batch goes out in the same locked step that marks the job done: a reader that sees every
variation also sees the final status (the page enables "Accept" as variations appear).

``session`` arguments here are session keys (``Storage.resolve``); a job keeps its key in memory only
(``_session``), never in ``job.json``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from midirwkv.config import SampleConfig
from midirwkv.errors import BadRequestError, MidiRwkvError
from midirwkv.server.schemas import JOB_FINAL
from midirwkv.server.storage import ConflictError, NotFoundError, QuotaError, Storage, read_json

log = logging.getLogger("midirwkv.server")

GEN_CHUNK = 4
"""Variations sampled together in one batch (a batch shares every model call; progress is per batch)."""
CACHE_SIZE = 16
"""Prompt states kept for "more variations" (each is one batch-1 RNN state: a few MB at most)."""
SAVE_EVERY_S = 0.5
"""Shortest interval between two progress writes of one job to disk."""


class JobCancelled(Exception):
    """Raised inside the worker at the next model call after a job was cancelled."""


class _Watched:
    """The model as the engine sees it, plus a per-step hook (progress and cancellation of a job)."""

    def __init__(self, model):
        self._model = model
        self.cfg = getattr(model, "cfg", None)
        self.hook = None

    def _tick(self) -> None:
        if self.hook is not None:
            self.hook()

    def __call__(self, *args, **kwargs):
        self._tick()
        return self._model(*args, **kwargs)

    def step(self, idx, state):
        self._tick()
        return self._model.step(idx, state)

    def init_state(self, batch: int):
        return self._model.init_state(batch)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


@dataclass
class _Cached:
    """What a finished infill job leaves for cheap extra variations."""

    session: object  # infer.session.InfillSession (prefix state after FillBar_Start) or TrackSession
    request: object  # music.infill.InfillRequest or TrackRequest
    score: object  # symusic.Score the span was cut from
    st: object  # its ScoreTokens
    asked: object  # BarControls asked per span bar (infill) or the TrackControls asked (add_track)
    kind: str = "infill"  # "infill" or "add_track"
    target: int = -1  # add_track: Score index of the written track in the result


def _record(job: dict) -> dict:
    """What is written to ``job.json``: the job without its in-memory fields (``_session``, ``_saved``)."""
    return {k: v for k, v in job.items() if not k.startswith("_")}


def sample_config(sampling: dict) -> SampleConfig:
    """``SampleConfig`` from a request's sampling settings (BadRequestError on a bad value)."""
    return SampleConfig(**sampling)


class JobManager:
    """Queue, worker thread, job records and the prompt-state cache."""

    def __init__(self, storage: Storage, engine, *, cache_size: int = CACHE_SIZE, max_queue: int = 512):
        self.storage = storage
        self.engine = engine
        self.vocab = engine.vocab
        self.model = _Watched(engine.model)
        self.max_queue = max_queue
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, _Cached] = OrderedDict()
        self._lock = threading.RLock()
        self._live: dict[str, dict] = {}  # job_id -> record of queued / running jobs
        self._folders: dict[str, Path] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._order: list[str] = []  # queued job ids, oldest first
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self.stats = {"prefills": 0, "cache_hits": 0}
        """Prompt prefills run and "more variations" served from the cache (see ``/api/health``)."""
        storage.busy = self.active_sessions  # expired sessions with a job still queued or running are kept
        self.recovered = self._recover()
        self._thread = threading.Thread(target=self._work, name="midirwkv-generate", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ start / stop
    def _recover(self) -> int:
        """Mark jobs that were queued or running when the server last stopped as failed; returns how many."""
        count = 0
        for path in self.storage.all_job_files():
            job = read_json(path)
            if job["status"] in JOB_FINAL:
                continue
            job.update(
                status="failed",
                finished=time.time(),
                message="interrupted by a server restart",
                error={
                    "error": "Interrupted",
                    "argument": None,
                    "message": f"the server stopped while this job was {job['status']}; "
                    "no variation was lost (none had been written)",
                    "fix": "submit the request again",
                },
            )
            self.storage.write_json(path, job)
            count += 1
        return count

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker: cancel the running job; queued ones stay on disk (failed at next start)."""
        self._stop.set()
        with self._lock:
            for event in self._cancel.values():
                event.set()
        self._queue.put(None)
        self._thread.join(timeout)

    # ------------------------------------------------------------------------------------------ public
    def submit(
        self,
        session: str,
        upload_id: str,
        kind: str,
        request: dict,
        base_version: int,
        parent_job: str | None = None,
    ) -> dict:
        """Create, persist and queue a job; returns its record."""
        if self._stop.is_set():
            raise ConflictError("the server is shutting down", argument="job", value=None, fix="retry in a moment")
        limit = self.storage.limits.max_queued
        with self._lock:
            if len(self._order) >= self.max_queue:
                raise ConflictError(
                    "too many queued jobs",
                    argument="queue",
                    value=len(self._order),
                    fix="wait for some to finish, then retry",
                )
            mine = sum(1 for j in self._live.values() if j["_session"] == session)
            if mine >= limit:
                raise QuotaError(
                    f"this session already has {mine} jobs queued or running, the most it may have",
                    argument="max_queued",
                    value=limit,
                    fix="wait for one to finish (or cancel one), then retry; the server's MIDIRWKV_MAX_QUEUED "
                    "raises the limit",
                )
        path, _ = self.storage.version_path(session, upload_id, base_version)
        # each variation is about the song's size; the job's record and reports are small beside it
        self.storage.check_space(session, int(request.get("variations", 1)) * path.stat().st_size, "this job")
        job_id, folder = self.storage.new_job_dir(session, upload_id)
        job = {
            "job_id": job_id,
            "upload_id": upload_id,
            "_session": session,
            "kind": kind,
            "status": "queued",
            "progress": 0.0,
            "message": "waiting for the model",
            "error": None,
            "base_version": base_version,
            "parent_job": parent_job,
            "request": request,
            "created": time.time(),
            "started": None,
            "finished": None,
            "variations": [],
        }
        with self._lock:
            self.storage.write_json(folder / "job.json", _record(job))
            self._live[job_id] = job
            self._folders[job_id] = folder
            self._cancel[job_id] = threading.Event()
            self._order.append(job_id)
        self._queue.put(job_id)
        return _record(job)

    def get(self, session: str, upload_id: str, job_id: str) -> dict:
        """The job's record (live when queued / running, from disk otherwise), with its queue position."""
        folder = self.storage.job_dir(session, upload_id, job_id)
        with self._lock:
            live = self._live.get(job_id)
            if live is not None:
                job = _record(live)
                job["variations"] = list(live["variations"])  # a snapshot: the worker appends to the live list
                job["queue_position"] = self._order.index(job_id) if job_id in self._order else None
                return job
        return read_json(folder / "job.json")

    def active_sessions(self) -> set[str]:
        """Sessions with a queued or running job (their files must stay)."""
        with self._lock:
            return {j["_session"] for j in self._live.values()}

    def forget_upload(self, session: str, upload_id: str) -> None:
        """Before an upload is deleted: refuse while a job of it is queued or running; drop its cached states."""
        with self._lock:
            if any(j["_session"] == session and j["upload_id"] == upload_id for j in self._live.values()):
                raise ConflictError(
                    "a job of this upload is queued or running",
                    argument="upload_id",
                    value=upload_id,
                    fix="cancel it (POST .../jobs/{job_id}/cancel) or wait for it to finish",
                )
            for key in [k for k in self._cache if k[:2] == (session, upload_id)]:
                del self._cache[key]

    def list(self, session: str, upload_id: str) -> list[dict]:
        return [self.get(session, upload_id, j["job_id"]) for j in self.storage.list_jobs(session, upload_id)]

    def cancel(self, session: str, upload_id: str, job_id: str) -> dict:
        """Cancel a queued or running job (a finished one answers 409)."""
        self.storage.job_dir(session, upload_id, job_id)
        with self._lock:
            event = self._cancel.get(job_id)
            job = self._live.get(job_id)
            if event is None or job is None:
                raise ConflictError(
                    "the job has already finished",
                    argument="job_id",
                    value=job_id,
                    fix="nothing to cancel; fetch its variations instead",
                )
            event.set()
            if job["status"] == "queued":
                self._order.remove(job_id)
                self._finish(job_id, status="cancelled", message="cancelled before it started")
        return self.get(session, upload_id, job_id)

    def variation_path(self, session: str, upload_id: str, job_id: str, variation: int) -> Path:
        folder = self.storage.job_dir(session, upload_id, job_id)
        job = self.get(session, upload_id, job_id)
        for var in job["variations"]:
            if var["variation"] == variation:
                return folder / var["file"]
        raise NotFoundError(
            "no such variation",
            argument="variation",
            value=variation,
            fix=f"use 1..{len(job['variations'])} (job status: {job['status']})",
        )

    # ------------------------------------------------------------------------------------------ worker
    def _work(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None:
                break
            with self._lock:
                job = self._live.get(job_id)
                if job is None or job["status"] != "queued":
                    continue
                self._order.remove(job_id)
                job.update(status="running", started=time.time(), message="starting")
                cancel = self._cancel[job_id]
            self._save(job_id)
            try:
                self._execute(job_id, job, cancel)
            except JobCancelled:
                self._finish(job_id, status="cancelled", message="cancelled while running")
            except MidiRwkvError as exc:
                self._finish(job_id, status="failed", message="failed", error=exc.to_dict())
            except Exception as exc:  # the worker must survive anything one job does; the job records it
                log.exception("job %s crashed", job_id)
                self._finish(
                    job_id,
                    status="failed",
                    message="failed",
                    error={
                        "error": type(exc).__name__,
                        "message": f"internal error: {exc}"[:500],
                        "argument": None,
                        "fix": "report this with the request that caused it",
                    },
                )
            finally:
                self.model.hook = None

    def _save(self, job_id: str, force: bool = True) -> None:
        with self._lock:
            job = self._live.get(job_id)
            if job is None:
                return
            now = time.time()
            if not force and now - job.get("_saved", 0.0) < SAVE_EVERY_S:
                return
            job["_saved"] = now
            record = _record(job)
            folder = self._folders[job_id]
        self.storage.write_json(folder / "job.json", record)

    def _finish(
        self, job_id: str, *, status: str, message: str, error: dict | None = None, variations: list | None = None
    ) -> None:
        """Final state, with the last ``variations`` if any, in one step: written to disk, then dropped from the
        live table (readers see the live record or the file, both whole)."""
        with self._lock:
            job = self._live[job_id]
            job["variations"].extend(variations or [])
            job.update(status=status, message=message, error=error, finished=time.time())
            if status == "done":
                job["progress"] = 1.0
            self.storage.write_json(self._folders[job_id] / "job.json", _record(job))
            del self._live[job_id], self._cancel[job_id], self._folders[job_id]

    def _set(self, job_id: str, **changes) -> None:
        with self._lock:
            self._live[job_id].update(changes)
        self._save(job_id, force=False)

    # ------------------------------------------------------------------------------------------ generation
    def _execute(self, job_id: str, job: dict, cancel: threading.Event) -> None:
        kind = job["kind"]
        if kind == "infill":
            cached = self._prepare_infill(job_id, job, cancel, key=(job["_session"], job["upload_id"], job_id))
        elif kind == "add_track":
            cached = self._prepare_track(job_id, job, cancel, key=(job["_session"], job["upload_id"], job_id))
        elif kind == "more":
            cached = self._cached_for(job_id, job, cancel)
        else:
            raise BadRequestError("unknown job kind", argument="kind", value=kind, fix="use infill, add_track or more")
        cfg = sample_config(job["request"]["sampling"])
        self._generate(job_id, job, cancel, cached, cfg)

    def _load_version(self, job: dict):
        from midirwkv.music.remi import encode_score, load_score

        path, _ = self.storage.version_path(job["_session"], job["upload_id"], job["base_version"])
        score = load_score(path.read_bytes())
        return score, encode_score(score, self.vocab)

    def _prepare_infill(self, job_id: str, job: dict, cancel: threading.Event, key: tuple) -> _Cached:
        """Read the song, build the prompt and prefill it (cached under ``key``)."""
        from midirwkv.infer.pipeline import open_span
        from midirwkv.music.infill import validate_request

        req_in = job["request"] if job["kind"] == "infill" else None
        if req_in is None:
            raise ConflictError("internal: prompt of a non-infill job", argument="kind", value=job["kind"],
                                fix="report this")
        self._set(job_id, message="reading the song")
        score, st = self._load_version(job)
        req = infill_request(req_in)
        _, asked = validate_request(st, req)
        self.model.hook = self._hook(cancel)
        session = open_span(self.engine, st, req, model=self.model, before_read=lambda prompt: self._set(
            job_id, message=f"reading the prompt ({len(prompt.ids)} tokens)"))
        self.stats["prefills"] += 1
        cached = _Cached(session=session, request=req, score=score, st=st, asked=asked)
        self._keep(key, cached)
        return cached

    def _keep(self, key: tuple, cached: _Cached) -> None:
        with self._lock:
            self._cache[key] = cached
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _prepare_track(self, job_id: str, job: dict, cancel: threading.Event, key: tuple) -> _Cached:
        """Read the song, build the track prompt and prefill the other tracks (cached under ``key``)."""
        from midirwkv.infer.pipeline import open_track

        self._set(job_id, message="reading the song")
        score, st = self._load_version(job)
        req, asked, target = track_request(st, job["request"], self.vocab, n_tracks=len(score.tracks))
        self.model.hook = self._hook(cancel)
        session = open_track(self.engine, st, req, model=self.model, before_read=lambda prompt: self._set(
            job_id, message=f"reading the other tracks ({len(prompt.ids)} tokens)"))
        self.stats["prefills"] += 1
        cached = _Cached(
            session=session, request=req, score=score, st=st, asked=asked, kind="add_track", target=target
        )
        self._keep(key, cached)
        return cached

    def _cached_for(self, job_id: str, job: dict, cancel: threading.Event) -> _Cached:
        """The prompt state of the root infill job of a "more" job (rebuilt when it was evicted or lost)."""
        root = job["request"]["root_job"]
        key = (job["_session"], job["upload_id"], root)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
        if cached is not None:
            self.stats["cache_hits"] += 1
            self._set(job_id, message="reusing the cached prompt state")
            return cached
        root_job = read_json(self.storage.job_dir(job["_session"], job["upload_id"], root) / "job.json")
        prepare = self._prepare_track if root_job["kind"] == "add_track" else self._prepare_infill
        return prepare(job_id, root_job | {"_session": job["_session"]}, cancel, key)

    @staticmethod
    def _hook(cancel: threading.Event):
        """A step hook that only checks for cancellation (prefill)."""

        def hook() -> None:
            if cancel.is_set():
                raise JobCancelled

        return hook

    def _generate(
        self, job_id: str, job: dict, cancel: threading.Event, cached: _Cached, cfg: SampleConfig
    ) -> None:
        from midirwkv.infer.pipeline import span_checker, splice_span, splice_written_track

        req = cached.request
        n = int(job["request"]["variations"])
        seed = int(job["request"]["seed"])
        track = cached.kind == "add_track"
        if track:
            checker = None
            per_bar = cached.asked.density_max if cached.asked.density_max is not None else 8
            expected = cached.st.n_bars * (4 + 3 * per_bar)
        else:
            tt = cached.st.track(req.track)
            checker = span_checker(self.engine, cached.score, cached.st, req, cached.asked, cfg)
            # rough decoding steps of one batch: a few tokens per requested note plus each bar's header/controls
            expected = sum(12 + 3 * (c.density if c.density is not None else 8) for c in cached.asked)
        steps = [0]
        folder = self.storage.job_dir(job["_session"], job["upload_id"], job_id)
        done = 0
        while done < n:
            rows = min(GEN_CHUNK, n - done)

            def hook(base=done, rows=rows) -> None:
                if cancel.is_set():
                    raise JobCancelled
                steps[0] += 1
                if steps[0] % 8 == 0:
                    part = min(0.95, steps[0] / max(expected, 1))
                    self._set(job_id, progress=round((base + part * rows) / n, 4))

            steps[0] = 0
            self.model.hook = hook
            self._set(job_id, message=f"sampling variations {done + 1}-{done + rows} of {n}")
            if track:
                outs = cached.session.generate(
                    rows, cfg, seed + done, require_notes=cached.asked.density_max != 0
                )
            else:
                outs = cached.session.generate(rows, cfg, seed + done, checker=checker)
            self.model.hook = None
            records = []
            for k, out in enumerate(outs):
                number = done + k + 1
                splice_result = splice_written_track if track else splice_span
                new_score, new_st = splice_result(self.engine, cached.score, cached.st, req, out)
                name = f"var_{number}.mid"
                self.storage.write_bytes(folder / name, new_score.dumps_midi())
                record = {
                    "variation": number,
                    "seed": out.seed,
                    "sampled_tokens": out.sampled,
                    "file": name,
                }
                if track:
                    record.update(track_reports(new_st, cached.target, cached.asked, self.vocab))
                else:
                    record["bars"] = bar_reports(new_st, req, cached.asked, tt.is_drum)
                records.append(record)
            done += rows
            if done >= n:
                # the last batch and "done" in one step: never every variation with the job still running
                self._finish(job_id, status="done", message=f"{n} variation{'s' if n > 1 else ''} ready",
                             variations=records)
                return
            with self._lock:
                self._live[job_id]["variations"].extend(records)
                self._live[job_id]["progress"] = round(done / n, 4)
            self._save(job_id)


def infill_request(req_in: dict):
    """``music.infill.InfillRequest`` from an infill job's request (1-based inclusive in, 0-based out)."""
    from midirwkv.music.controls import BarControls
    from midirwkv.music.infill import InfillRequest

    controls = req_in.get("controls")
    if controls is not None:
        controls = [BarControls(**c) for c in controls]
    return InfillRequest(
        track=req_in["track"],
        start=req_in["first_bar"] - 1,
        end=req_in["last_bar"],
        controls=controls,
        context_bars=req_in["context_bars"],
    )


def bar_reports(new_st, req, asked: list, is_drum: bool = False) -> list[dict]:
    """Per span bar: the controls asked, the controls measured on the result and the asked ones missed.

    ``new_st`` is the result encoded on the original's grid; a track the result left empty measures as empty bars.
    """
    from midirwkv.infer.reports import empty_bar, missed_fields

    tt = next((t for t in new_st.tracks if t.index == req.track), None)
    out = []
    for j, bar in enumerate(range(req.start, req.end)):
        got = tt.controls[bar] if tt is not None else empty_bar(is_drum)
        out.append({"bar": bar + 1, "asked": asked[j].to_dict(), "achieved": got.to_dict(),
                    "missed": missed_fields(asked[j], got)})
    return out


def track_request(st, req_in: dict, vocab, n_tracks: int | None = None):
    """(``TrackRequest``, ``TrackControls`` asked, Score index of the written track) from an add-track request.

    Controls left null are free for a new track and measured from the original for a regenerated one; drum
    tracks keep the densities only. ``n_tracks`` (the Score's track count) places a new track last.
    """
    from midirwkv.infer.requests import ADD_TRACK_MAX_PROMPT_TOKENS, track_controls
    from midirwkv.music.controls import TrackControls
    from midirwkv.music.infill import TrackRequest, track_controls_of

    given = req_in.get("controls")
    regenerate = req_in.get("regenerate")
    if regenerate is not None:
        tt = st.track(regenerate, "regenerate")
        is_drum, target = tt.is_drum, tt.index
        base = TrackControls(**given) if given is not None else track_controls_of(st, tt, vocab)
    else:
        is_drum = req_in["program"] == -1
        target = n_tracks if n_tracks is not None else max((t.index for t in st.tracks), default=-1) + 1
        base = TrackControls(**given) if given is not None else None
    asked = track_controls(base, is_drum=is_drum)
    req = TrackRequest(
        track=regenerate,
        program=req_in.get("program"),
        controls=asked,
        name=req_in.get("name") or "",
        max_prompt_tokens=ADD_TRACK_MAX_PROMPT_TOKENS,
    )
    return req, asked, target


def track_reports(new_st, target: int, asked, vocab) -> dict:
    """Per bar of an add-track result (nothing asked per bar, the measured controls), and its track controls."""
    from midirwkv.infer.reports import missed_fields
    from midirwkv.music.controls import BarControls
    from midirwkv.music.infill import track_controls_of

    tt = next((t for t in new_st.tracks if t.index == target), None)
    free = BarControls().to_dict()
    bars = [
        {"bar": b + 1, "asked": free, "achieved": tt.controls[b].to_dict() if tt is not None else None, "missed": []}
        for b in range(new_st.n_bars)
    ]
    achieved = track_controls_of(new_st, tt, vocab) if tt is not None else None
    return {"bars": bars, "track_controls": {"track": target, "asked": asked.to_dict(),
                                             "achieved": achieved.to_dict() if achieved is not None else None,
                                             "missed": missed_fields(asked, achieved)}}
