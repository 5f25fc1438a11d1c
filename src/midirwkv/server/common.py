"""What the server's app and route modules share: the session header and cookie, upload and event limits,
the song describer (memoised), error bodies, job records as answers, and :class:`Context`, the objects every
route module is registered with."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse

from midirwkv.errors import BadMidiError
from midirwkv.music import gm
from midirwkv.server import schemas as S

SESSION_COOKIE = "midirwkv_session"

SESSION_HEADER = "X-Midirwkv-Session"

MAX_UPLOAD_BYTES = 4 * 1024 * 1024
"""Largest MIDI file accepted (a long multi-track song is well under 1 MB)."""

EVENT_POLL_S = 0.25
"""How often the server-sent event stream looks at a job."""

EVENT_MAX_S = 3600.0
"""A progress stream ends after this long (the client reconnects or polls)."""


def instrument_name(program: int, is_drum: bool) -> str:
    """The General MIDI instrument and program number (``"Trumpet (program 56)"``), ``"Drums"`` for drums."""
    if is_drum or program < 0:
        return gm.DRUMS
    return f"{gm.instrument_name(program, is_drum)} (program {program})"


class Describer:
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

    def remember(self, path: Path, info) -> None:
        """Keep the description of a file just written (an upload's first version: it was described to be
        checked, so it is not encoded a second time)."""
        self._get("describe", path, lambda: info)

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


def error_response(status: int, body: dict) -> JSONResponse:
    return JSONResponse(status_code=status, content=S.ErrorBody(**body).model_dump())


def job_out(job: dict) -> dict:
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


def download_name(filename: str, suffix: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", filename.rsplit(".", 1)[0])[:60].strip("._") or "song"
    return f"{stem}_{suffix}.mid"


def check_midi(data: bytes, vocab):
    """Parse and tokenise uploaded bytes -> their ``music.inspect.Description`` (BadMidiError / BadRequestError
    when the engine cannot use them)."""
    from midirwkv.music.inspect import describe
    from midirwkv.music.remi import load_score

    info = describe(load_score(data), vocab)
    if not info.tracks:
        raise BadMidiError(
            "no track has notes the model can read",
            argument="body",
            value=None,
            fix="upload a file with pitched or drum notes in the piano range",
        )
    return info


@dataclass
class Context:
    """The objects of one app that its route modules use (``create_app`` makes it)."""

    storage: Any
    """``server.storage.Storage``: sessions, uploads, versions, quotas."""
    jobs: Any
    """``server.jobs.JobManager``: the generation queue and its records."""
    engine: Any
    """``infer.api.Engine``: the loaded model and vocabulary."""
    describer: Describer
    limits: Any
    """``server.storage.ServerLimits``."""
    errors: dict
    """The error answers routes declare in the OpenAPI schema."""
    session_of: Callable[..., str]
    """The FastAPI dependency that turns the request's token into its session key."""
    max_upload_bytes: int
