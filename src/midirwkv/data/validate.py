"""Validation and hashing of corpus files (runs in worker processes): each file gets exactly one of
:data:`REASONS` or is kept and encoded; files are dealt to workers in shards whose results are cached by key, so
an interrupted ``prepare`` resumes where it stopped."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from midirwkv.data.arrays import (
    ArrayBuilder,
)
from midirwkv.data.sources import (
    BytesSource,
    Source,
    _iter_members,
    _Member,
)
from midirwkv.errors import BadMidiError, BadRequestError, LimitError

CONTENT_STEPS_PER_QUARTER = 24
"""Resolution of the content hash: onsets and durations are rounded to 1/24 quarter, so a file re-saved
at another ticks-per-quarter (or another tempo) hashes the same."""


# Drop reasons, in the order they are checked. Each file gets exactly one (or is kept).
REASONS = (
    "unreadable",         # the file or archive member could not be read
    "too_small",          # fewer than 14 bytes: not even a MIDI header
    "not_midi",           # no MThd header (saved HTML pages, text, other formats)
    "parse_error",        # symusic could not parse it
    "zero_tpq",           # ticks per quarter <= 0 (or SMPTE timing symusic cannot map)
    "too_large",          # above a music-layer limit: bars, notes, tracks, last tick (music.remi.ScoreLimits)
    "too_few_notes",      # fewer than min_notes notes
    "too_short",          # fewer than min_bars bars on the (declared or overridden) meter grid
    "encode_error",       # the music layer refused the score
    "duplicate_file",     # same bytes (sha1) as an earlier file
    "duplicate_content",  # same notes (content hash) as an earlier file
)


def unwrap_midi_bytes(data: bytes) -> bytes:
    """Return the Standard MIDI File inside ``data``: RIFF/RMID and gzip wrappers are removed.

    Raises ``BadMidiError`` when no ``MThd`` header can be found.
    """
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise BadMidiError("gzip-wrapped file is corrupt", argument="data", value=len(data),
                               fix="re-download the file") from exc
    if data[:4] == b"RIFF" and data[8:12] == b"RMID":
        pos = 12
        while pos + 8 <= len(data):
            chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
            if chunk == b"data":
                data = data[pos + 8:pos + 8 + size]
                break
            pos += 8 + size + (size & 1)
    if data[:4] != b"MThd":
        raise BadMidiError("no MThd header: not a Standard MIDI File", argument="data", value=data[:16],
                           fix="drop the file (saved web pages and text files are common in scraped sets)")
    return data


def count_bars(score: Any, meter_override: tuple[int, int] | None = None) -> int:
    """Number of bars needed to cover every note of ``score`` on its time-signature grid.

    With ``meter_override`` the whole file is read in that meter. Time-signature events are honoured
    where they occur (a change mid-bar starts a new bar, as the music layer's grid does).
    """
    tpq = int(score.ticks_per_quarter)
    end = 0
    for track in score.tracks:
        if len(track.notes):
            arr = track.notes.numpy()
            end = max(end, int((arr["time"] + arr["duration"]).max()), int(arr["time"].max()) + 1)
    if end <= 0:
        return 0
    if meter_override is not None:
        changes = [(0, *meter_override)]
    else:
        changes = []
        for ts in sorted(score.time_signatures, key=lambda t: t.time):
            if ts.numerator <= 0 or ts.denominator <= 0:
                continue
            if changes and changes[-1][0] == ts.time:
                changes[-1] = (ts.time, ts.numerator, ts.denominator)
            else:
                changes.append((int(ts.time), int(ts.numerator), int(ts.denominator)))
        if not changes or changes[0][0] > 0:
            changes.insert(0, (0, 4, 4))
    bars = 0
    for i, (start, num, den) in enumerate(changes):
        if start >= end:
            break
        stop = changes[i + 1][0] if i + 1 < len(changes) else end
        bar_len = max(1, tpq * 4 * num // den)
        bars += -(-(min(stop, end) - start) // bar_len)
    return bars


def content_hash(score: Any) -> str:
    """sha1 of the sorted (onset, pitch, duration, program-or-drum) notes in 1/24-quarter units.

    Independent of tempo, ticks per quarter, velocities, track order and track splitting, so a file
    re-saved by another editor hashes like the original.
    """
    tpq = float(score.ticks_per_quarter)
    cols = []
    for track in score.tracks:
        if not len(track.notes):
            continue
        arr = track.notes.numpy()
        n = len(arr["time"])
        prog = np.full(n, 128 if track.is_drum else int(track.program), dtype=np.int64)
        onset = np.rint(arr["time"].astype(np.float64) * CONTENT_STEPS_PER_QUARTER / tpq).astype(np.int64)
        dur = np.rint(arr["duration"].astype(np.float64) * CONTENT_STEPS_PER_QUARTER / tpq).astype(np.int64)
        cols.append(np.stack([onset, arr["pitch"].astype(np.int64), dur, prog], axis=1))
    if not cols:
        return hashlib.sha1(b"").hexdigest()
    notes = np.concatenate(cols)
    notes = notes[np.lexsort(notes.T[::-1])]
    notes -= np.array([notes[:, 0].min(), 0, 0, 0], dtype=np.int64)  # leading silence does not matter
    return hashlib.sha1(np.ascontiguousarray(notes).tobytes()).hexdigest()


@dataclass(frozen=True)
class Settings:
    min_bars: int
    min_notes: int
    vocab_spec: str | None         # path of the tokenizer JSON, or None for the shipped one
    encoder: Callable[..., Any] | None


# One vocabulary per worker process, loaded by ``worker_init``.
_WORKER: dict[str, Any] = {}


def worker_init(settings: Settings, vocab: Any | None) -> None:
    _WORKER["settings"] = settings
    if vocab is None:
        from midirwkv.music.vocab import Vocab
        vocab = Vocab.load(settings.vocab_spec)
    _WORKER["vocab"] = vocab
    _WORKER["encoder"] = settings.encoder or _default_encoder


def _default_encoder(score: Any, vocab: Any, meter_override: tuple[int, int] | None) -> Any:
    from midirwkv.music import remi
    if meter_override is None:
        return remi.encode_score(score, vocab)
    return remi.encode_score(score, vocab, meter_override=meter_override)


def _load_score(data: bytes) -> Any:
    import symusic
    return symusic.Score.from_midi(data)


def process_member(name: str, data: bytes | None, error: str | None,
                    meter: tuple[int, int] | None) -> tuple[dict, Any]:
    """Validate, hash and encode one file. Returns (record, ScoreTokens or None)."""
    settings: Settings = _WORKER["settings"]
    rec: dict[str, Any] = {"name": name, "reason": None}
    if data is None:
        rec["reason"], rec["detail"] = "unreadable", error
        return rec, None
    rec["size"] = len(data)
    rec["sha1"] = hashlib.sha1(data).hexdigest()
    if len(data) < 14:
        rec["reason"] = "too_small"
        return rec, None
    try:
        midi = unwrap_midi_bytes(data)
    except BadMidiError:
        rec["reason"] = "not_midi"
        return rec, None
    try:
        score = _load_score(midi)
    except (RuntimeError, ValueError, OverflowError) as exc:
        rec["reason"], rec["detail"] = "parse_error", str(exc)[:200]
        return rec, None
    if int(score.ticks_per_quarter) <= 0:
        rec["reason"] = "zero_tpq"
        return rec, None
    from midirwkv.music.remi import check_limits
    try:
        check_limits(score, meter_override=meter)      # before anything that costs per bar
    except LimitError as exc:
        rec["reason"], rec["detail"] = "too_large", str(exc)[:300]
        return rec, None
    except BadRequestError as exc:   # a meter override the vocabulary lacks: the encoder refuses it the same way
        rec["reason"], rec["detail"] = "encode_error", f"{type(exc).__name__}: {exc}"[:300]
        return rec, None
    n_notes = int(sum(len(t.notes) for t in score.tracks))
    rec["n_notes"] = n_notes
    if n_notes < settings.min_notes:
        rec["reason"] = "too_few_notes"
        return rec, None
    n_bars = count_bars(score, meter)
    rec["n_bars"] = n_bars
    if n_bars < settings.min_bars:
        rec["reason"] = "too_short"
        return rec, None
    rec["content"] = content_hash(score)
    try:
        st = _WORKER["encoder"](score, _WORKER["vocab"], meter)
    except Exception as exc:  # noqa: BLE001 - one odd file must not end a corpus run; kept in the manifest
        rec["reason"], rec["detail"] = "encode_error", f"{type(exc).__name__}: {exc}"[:300]
        return rec, None
    if not st.tracks:
        rec["reason"] = "too_few_notes"
        return rec, None
    rec["track_names"] = [t.name for t in st.tracks]
    return rec, st


@dataclass
class ShardTask:
    key: str
    source_id: int
    meter: tuple[int, int] | None
    members: list[_Member]


def run_shard(task: ShardTask) -> tuple[str, list[dict], dict[str, np.ndarray]]:
    """Worker: process every member of a shard; encoded files' arrays follow their records' order."""
    builder = ArrayBuilder()
    records = []
    for m in task.members:
        data, error = m.data, m.error
        if data is None and m.path is not None and error is None:
            try:
                data = m.path.read_bytes()
            except OSError as exc:
                error = str(exc)
        rec, st = process_member(m.name, data, error, task.meter)
        rec["source"] = task.source_id
        if st is not None:
            builder.add(st)
        records.append(rec)
    return task.key, records, builder.arrays()


def shard_key(settings_hash: str, label: str, members: list[_Member]) -> str:
    h = hashlib.sha1(settings_hash.encode())
    h.update(label.encode())
    for m in members:
        h.update(b"\0" + m.name.encode("utf-8", "surrogateescape") + b"\0" + m.stamp.encode())
    return h.hexdigest()[:20]


def iter_tasks(sources: list[Source | BytesSource], shard_size: int, settings_hash: str,
                done: set[str]) -> Iterator[ShardTask | tuple[str, int]]:
    """Yield a task per unfinished shard, or (key, source index) of each finished one."""
    for source_id, src in enumerate(sources):
        chunk: list[_Member] = []
        for member in _iter_members(src):
            chunk.append(member)
            if len(chunk) == shard_size:
                yield make_task(source_id, src, chunk, settings_hash, done)
                chunk = []
        if chunk:
            yield make_task(source_id, src, chunk, settings_hash, done)


def make_task(source_id: int, src: Source | BytesSource, chunk: list[_Member], settings_hash: str,
               done: set[str]) -> ShardTask | tuple[str, int]:
    key = shard_key(settings_hash, src.label, chunk)
    if key in done:
        return key, source_id
    return ShardTask(key, source_id, src.meter_override, chunk)
