"""What a DAW script calls: regenerate bars of a MIDI file through the local server when it runs, else with
the engine in this process, and the measured per-bar controls of some bars (``midirwkv daw infill`` and
``midirwkv daw controls``; the Ardour action runs these commands).

The server path is the one-request endpoint of :mod:`midirwkv.server.oneshot`: the MIDI file as the body,
track, bars and controls in the query, the answer when the job is done; each variation is then fetched as
a MIDI file. Only a server on a loopback address is used (the file stays on this machine).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from midirwkv.errors import BadRequestError, GenerationError, MidiRwkvError
from midirwkv.music.infill import CONTEXT_BARS

DEFAULT_SERVER = "http://127.0.0.1:8000"
SERVER_ENV = "MIDIRWKV_SERVER"
"""Environment variable naming the server a DAW script uses (default ``DEFAULT_SERVER``)."""
SESSION_HEADER = "X-Midirwkv-Session"
PROBE_TIMEOUT_S = 0.5
"""How long ``server_alive`` waits for ``/api/health``: a server that is not running answers at once."""
JOB_TIMEOUT_S = 1800.0
"""Longest wait for a server job (a long span with many variations on a slow CPU)."""
DURATIONS = ("whole", "half", "quarter", "eighth", "sixteenth")


@dataclass
class InfillParams:
    """One regeneration: a track (Score index), bars (1-based inclusive) and the controls asked."""

    track: int
    first_bar: int
    last_bar: int
    variations: int = 1
    seed: int | None = None
    context: int = CONTEXT_BARS
    density: int | None = None
    polyphony: str | None = None
    durations: str | None = None
    free_controls: bool = False
    controls: list[dict] | None = None
    """Per bar (one entry per bar of the span): ``{"density", "polyphony", "durations"}`` as
    ``server.oneshot.bar_controls`` reads them; wins over the controls above (which then must not be given)."""

    def __post_init__(self) -> None:
        if self.controls is not None:
            given = [k for k in ("density", "polyphony", "durations") if getattr(self, k) is not None]
            if given or self.free_controls:
                raise BadRequestError("give per-bar controls or the controls for every bar, not both",
                                      argument="controls", value=given or ["free_controls"],
                                      fix="put every value in the per-bar controls")
            from midirwkv.server.oneshot import bar_controls

            bar_controls(self.controls, self.last_bar - self.first_bar + 1)

    def query(self) -> dict:
        """The one-request endpoint's query parameters."""
        q = {"track": self.track, "first_bar": self.first_bar, "last_bar": self.last_bar,
             "variations": self.variations, "context_bars": self.context}
        for key in ("seed", "density", "polyphony", "durations"):
            if getattr(self, key) is not None:
                q[key] = getattr(self, key)
        if self.free_controls:
            q["free_controls"] = "true"
        if self.controls is not None:
            q["controls"] = json.dumps(self.controls, separators=(",", ":"))
        return q


def server_url(url: str | None = None) -> str:
    """The server to try: ``url``, else ``$MIDIRWKV_SERVER``, else ``DEFAULT_SERVER``; loopback hosts only."""
    text = (url or os.environ.get(SERVER_ENV) or DEFAULT_SERVER).rstrip("/")
    parts = urllib.parse.urlsplit(text)
    from midirwkv.server.security import is_loopback, split_host

    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadRequestError("the server must be an http URL", argument="--server", value=text,
                              fix=f"e.g. --server {DEFAULT_SERVER}")
    if not is_loopback(split_host(parts.netloc)[0]):
        raise BadRequestError("only a server on this machine is used (the song is sent to it)",
                              argument="--server", value=text, fix=f"e.g. --server {DEFAULT_SERVER}, or --local")
    return text


def server_alive(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a midirwkv server answers ``GET /api/health`` at ``url``."""
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=timeout) as r:
            return r.status == 200 and bool(json.loads(r.read()).get("ok"))
    except (OSError, ValueError):
        return False


def _request(url: str, *, data: bytes | None = None, headers: dict | None = None, timeout: float = 60.0) -> bytes:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            err = json.loads(body)
            message = err.get("message") or str(exc)
            argument, fix = err.get("argument"), err.get("fix")
        except ValueError:
            message, argument, fix = f"HTTP {exc.code}: {body[:200]!r}", None, None
        cls = BadRequestError if 400 <= exc.code < 500 else GenerationError
        raise cls(f"the server refused the request: {message}", argument=argument or "server",
                  value=exc.code, fix=fix or "see the server's log") from None
    except OSError as exc:
        raise GenerationError(f"the server did not answer: {exc}", argument="server", value=url,
                              fix="start it with `midirwkv serve`, or use --local") from None


def infill_via_server(url: str, data: bytes, params: InfillParams, *, filename: str = "daw.mid",
                      timeout: float = JOB_TIMEOUT_S) -> list[bytes]:
    """Regenerate through the server's one-request endpoint; returns each variation's MIDI bytes."""
    query = urllib.parse.urlencode(params.query() | {"filename": filename, "wait": 60})
    out = json.loads(_request(f"{url}/api/oneshot/infill?{query}", data=data,
                              headers={"Content-Type": "audio/midi"}, timeout=120.0))
    headers = {SESSION_HEADER: out["session"]}
    job = out["job"]
    end = time.monotonic() + timeout
    while job["status"] not in ("done", "failed", "cancelled"):
        if time.monotonic() > end:
            raise GenerationError("the server's job did not finish in time", argument="timeout", value=timeout,
                                  fix="ask for fewer bars or variations")
        time.sleep(0.5)
        job = json.loads(_request(f"{url}/api/uploads/{job['upload_id']}/jobs/{job['job_id']}", headers=headers))
    if job["status"] != "done":
        err = job.get("error") or {}
        raise GenerationError(f"the server's job {job['status']}: {err.get('message', job.get('message'))}",
                              argument=err.get("argument") or "job", value=job["job_id"],
                              fix=err.get("fix") or "see the server's log")
    return [_request(f"{url}{v['midi_url']}", headers=headers) for v in job["variations"]]


def infill_local(source: Path, params: InfillParams, *, model: str | None = None,
                 threads: int | None = None) -> list[bytes]:
    """Regenerate with the engine in this process; returns each variation's MIDI bytes."""
    from midirwkv.infer import api, requests
    from midirwkv.server.oneshot import bar_controls

    engine = api.load_engine(model, threads=threads)
    bars = f"{params.first_bar}-{params.last_bar}"
    controls = None if params.controls is None else bar_controls(params.controls, params.last_bar - params.first_bar + 1)
    _, report = api.infill(source, spans=[requests.Span(track=params.track, bars=bars, controls=controls)],
                           density=params.density, polyphony=params.polyphony, durations=params.durations,
                           free_controls=params.free_controls, context=params.context,
                           variations=params.variations, seed=params.seed, engine=engine)
    return [bytes(score.dumps_midi()) for score in report.scores]


def load_controls(path: str | Path) -> list:
    """The per-bar controls list of a JSON file (``--controls FILE``); checked by ``server.oneshot.bar_controls``
    later."""
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadRequestError(f"cannot read the controls file: {exc.strerror or exc}", argument="--controls",
                              value=str(path), fix="give a JSON file with one object per bar") from None
    except ValueError as exc:
        raise BadRequestError(f"the controls file is not JSON: {exc}", argument="--controls", value=str(path),
                              fix='e.g. [{"density": 6, "polyphony": "1-2", "durations": "quarter"}]') from None
    return items


def variation_paths(output: str | Path, variations: int) -> list[Path]:
    """``OUT_v1.mid ... OUT_vK.mid`` beside ``output`` (always numbered, even for one)."""
    base = Path(output)
    stem = base.name[:-len(base.suffix)] if base.suffix.lower() in (".mid", ".midi") else base.name
    return [base.with_name(f"{stem}_v{k}.mid") for k in range(1, variations + 1)]


def infill_files(source: str | Path, output: str | Path, params: InfillParams, *, server: str | None = None,
                 local: bool = False, model: str | None = None, threads: int | None = None) -> tuple[list[Path], str]:
    """Regenerate and write ``OUT_v1.mid ...``; returns the paths and where it ran ("server URL" or "local").

    The server is used when it answers (unless ``local``); a server that answers with an error is reported,
    never silently replaced by the local engine.
    """
    from midirwkv.infer.api import write_atomic

    src = Path(source)
    if not src.is_file():
        raise BadRequestError("the MIDI file does not exist", argument="IN.mid", value=str(src),
                              fix="give the path of a .mid file")
    paths = variation_paths(output, params.variations)
    url = None if local else server_url(server)
    if url is not None and server_alive(url):
        results, where = infill_via_server(url, src.read_bytes(), params, filename=src.name), url
    else:
        results, where = infill_local(src, params, model=model, threads=threads), "local"
    if len(results) != len(paths):
        raise GenerationError("the engine returned another number of variations", argument="variations",
                              value=len(results), fix=f"expected {len(paths)}")
    for data, path in zip(results, paths):
        write_atomic(data, path)
    return paths, where


def measured_bars(source: str | Path, track: int, first_bar: int, last_bar: int) -> list[dict]:
    """The measured controls of bars ``first_bar..last_bar`` (1-based inclusive) of one track: per bar a dict
    with ``bar, density, poly_min, poly_max, durations`` (a list of duration names)."""
    from midirwkv.music.inspect import describe

    info = describe(Path(source))
    if track not in info.controls:
        raise BadRequestError("no track with notes at that index", argument="track", value=track,
                              fix=f"use one of {sorted(info.controls)}")
    if not 1 <= first_bar <= last_bar <= info.n_bars:
        raise BadRequestError("bars outside the file", argument="bars", value=f"{first_bar}-{last_bar}",
                              fix=f"the file has bars 1-{info.n_bars}")
    out = []
    for bar in range(first_bar, last_bar + 1):
        c = info.controls[track][bar - 1]
        out.append({"bar": bar, "density": c["density"], "poly_min": c["poly_min"], "poly_max": c["poly_max"],
                    "durations": [d for d in DURATIONS if c.get(f"dur_{d}")]})
    return out


def format_bars(bars: list[dict]) -> str:
    """One line per bar, the text the Ardour action reads: ``bar 5 density 6 polyphony 1-2 durations q,e``."""
    return "".join(f"bar {b['bar']} density {b['density']} polyphony {b['poly_min'] or 1}-{b['poly_max'] or 1} "
                   f"durations {','.join(b['durations']) or 'none'}\n" for b in bars)


__all__ = ["DEFAULT_SERVER", "InfillParams", "MidiRwkvError", "format_bars", "infill_files",
           "infill_local", "infill_via_server", "load_controls", "measured_bars", "server_alive", "server_url",
           "variation_paths"]
