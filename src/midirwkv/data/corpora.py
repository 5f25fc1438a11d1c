"""Corpus preparation: scan, validate, deduplicate, split and tokenise MIDI collections.

``prepare_corpus`` turns folders and ``.tar.gz`` archives of MIDI files (or any iterable of
``(name, bytes)``, e.g. GigaMIDI rows) into a memory-mapped token cache, one folder per split
(``dataset.TokenCache`` reads it back).

Pipeline, in one pass over the inputs:

1. Members are read in a deterministic order (folders: sorted walk; archives: archive order) and cut into
   shards of ``shard_size`` files. A shard's key hashes what defines its result (member names, sizes and
   times, the vocabulary, the settings), so a rerun skips every shard already written.
2. Each shard is processed by a worker: validate (symusic), hash the bytes (sha1) and the note content
   (tempo- and resolution-independent), and encode every valid file with the music layer. Encoding
   duplicates too keeps shards independent of each other; the waste is the duplicate rate (~2%).
3. The merge step is serial and cheap: deduplicate over all shards (first file wins in the order
   (source, member name)), assign each unique file to a split by hashing its content hash (stable under
   reordering and under adding files), and write the per-split arrays and ``manifest.json``.

On-disk layout of ``out_dir/<split>/`` (raw little-endian arrays, described in ``arrays.json``):

=====================  =========  ==============  ==================================================
array                  dtype      shape           meaning
=====================  =========  ==============  ==================================================
``tokens``             uint16     (n_tokens,)     base (pre-BPE) ids of every bar, concatenated
``bar_tok_off``        int64      (n_bars + 1,)   bar b is ``tokens[bar_tok_off[b]:bar_tok_off[b+1]]``
``bar_controls``       int8       (n_bars, 8)     the 8 attribute-control values, -1 = not applicable
``track_bar_off``      int64      (n_tracks + 1,) bars of track t
``track_program``      int16      (n_tracks,)     0..127, -1 for drums
``track_is_drum``      uint8      (n_tracks,)
``track_index``        int32      (n_tracks,)     index of the track in the symusic Score
``file_track_off``     int64      (n_files + 1,)  tracks of file f
``file_grid_off``      int64      (n_files + 1,)  grid bars of file f (index into ``time_sigs``)
``bar_ticks``          int64      (n_grid + n_files,)  per file n_bars + 1 boundaries, at
                                                  ``file_grid_off[f] + f``
``time_sigs``          int16      (n_grid, 2)     (numerator, denominator) per grid bar
``file_tpq``           int32      (n_files,)      ticks per quarter of the original file
=====================  =========  ==============  ==================================================

``files.jsonl`` holds one JSON line per file (source, name, sha1, content hash, note count, track names).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import itertools
import json
import multiprocessing
import operator
import os
import platform
import shutil
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from midirwkv.data.sources import (
    BytesSource,
    Source,
    SourceLike,
    _iter_members,
    _Member,
    _resolve_sources,
    gigamidi_rows,
    gigamidi_source,
    load_gigamidi,
    read_member_bytes,
)
from midirwkv.errors import BadMidiError, BadRequestError, DataError, LimitError
from midirwkv.files import atomic_path, write_text_atomic

SPLITS = ("train", "valid", "test")
"""Names of the three splits, in the order of ``prepare_corpus(splits=...)``."""

N_CONTROLS = 8
"""Attribute-control values stored per bar (PolyMin PolyMax Density DurWhole..DurSixteenth)."""

FORMAT_VERSION = 1
"""Version of the on-disk layout; bumped when arrays change meaning."""

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

_TMP_SUFFIX = ".tmp"


# --------------------------------------------------------------------------------------------------------
# Validation and hashing (runs in workers)


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
class _Settings:
    min_bars: int
    min_notes: int
    vocab_spec: str | None         # path of the tokenizer JSON, or None for the shipped one
    encoder: Callable[..., Any] | None


# One vocabulary per worker process, loaded by ``_worker_init``.
_WORKER: dict[str, Any] = {}


def _worker_init(settings: _Settings, vocab: Any | None) -> None:
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


def _process_member(name: str, data: bytes | None, error: str | None,
                    meter: tuple[int, int] | None) -> tuple[dict, Any]:
    """Validate, hash and encode one file. Returns (record, ScoreTokens or None)."""
    settings: _Settings = _WORKER["settings"]
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


# --------------------------------------------------------------------------------------------------------
# Arrays: ScoreTokens <-> flat arrays


_ARRAY_DTYPES: dict[str, Any] = {
    "tokens": np.uint16, "bar_tok_off": np.int64, "bar_controls": np.int8,
    "track_bar_off": np.int64, "track_program": np.int16, "track_is_drum": np.uint8, "track_index": np.int32,
    "file_track_off": np.int64, "file_grid_off": np.int64, "bar_ticks": np.int64, "time_sigs": np.int16,
    "file_tpq": np.int32,
}
_OFFSET_ARRAYS = {"bar_tok_off": "tokens", "track_bar_off": "bar_tok_off", "file_track_off": "track_bar_off",
                  "file_grid_off": "time_sigs"}


_CONTROL_GETTERS: dict[type, Callable[[Any], tuple]] = {}


def _control_getter(controls: Any) -> Callable[[Any], tuple]:
    getter = _CONTROL_GETTERS.get(type(controls))
    if getter is None:
        if dataclasses.is_dataclass(controls):
            getter = operator.attrgetter(*(f.name for f in dataclasses.fields(controls)))
        else:
            getter = tuple
        _CONTROL_GETTERS[type(controls)] = getter
    return getter


def controls_to_rows(controls: Sequence[Any]) -> np.ndarray:
    """(n, 8) int8 values of BarControls (dataclass field order): ``None`` -> -1, bools -> 0/1."""
    if not len(controls):
        return np.zeros((0, N_CONTROLS), dtype=np.int8)
    getter = _control_getter(controls[0])
    table = np.array([getter(c) for c in controls], dtype=object)
    if table.ndim != 2 or table.shape[1] != N_CONTROLS:
        raise DataError(f"bar controls must hold {N_CONTROLS} values", argument="controls", value=controls[0],
                        fix="use music.controls.BarControls")
    table[np.equal(table, None)] = -1
    return table.astype(np.int8)


class _ArrayBuilder:
    """Appends ScoreTokens to growing lists, then hands out the arrays of the layout above."""

    def __init__(self) -> None:
        self.tokens: list[np.ndarray] = []
        self.bar_len: list[int] = []
        self.controls: list[np.ndarray] = []
        self.track_nbars: list[int] = []
        self.track_program: list[int] = []
        self.track_is_drum: list[int] = []
        self.track_index: list[int] = []
        self.file_ntracks: list[int] = []
        self.file_nbars: list[int] = []
        self.bar_ticks: list[int] = []
        self.time_sigs: list[tuple[int, int]] = []
        self.file_tpq: list[int] = []

    def add(self, st: Any) -> None:
        n_grid = len(st.bar_ticks) - 1
        if n_grid < 0 or len(st.time_sigs) != n_grid:
            raise DataError("ScoreTokens grid is inconsistent", argument="bar_ticks",
                            value=(len(st.bar_ticks), len(st.time_sigs)),
                            fix="encode_score must return n_bars + 1 boundaries and n_bars time signatures")
        for track in st.tracks:
            if len(track.controls) != len(track.bars):
                raise DataError("a track has a different number of bars and controls", argument="track",
                                value=(track.index, len(track.bars), len(track.controls)),
                                fix="encode_score must give one BarControls per bar")
            flat = np.fromiter(itertools.chain.from_iterable(track.bars), dtype=np.int64)
            if flat.size and (flat.min() < 0 or flat.max() >= np.iinfo(np.uint16).max):
                raise DataError("token id does not fit uint16", argument="bars", value=int(flat.max()),
                                fix="base vocabularies must stay below 65535 ids")
            self.tokens.append(flat.astype(np.uint16))
            self.bar_len.extend(len(bar) for bar in track.bars)
            self.controls.append(controls_to_rows(track.controls))
            self.track_nbars.append(len(track.bars))
            self.track_program.append(int(track.program))
            self.track_is_drum.append(int(bool(track.is_drum)))
            self.track_index.append(int(track.index))
        self.file_ntracks.append(len(st.tracks))
        self.file_nbars.append(n_grid)
        self.bar_ticks.extend(int(t) for t in st.bar_ticks)
        self.time_sigs.extend((int(a), int(b)) for a, b in st.time_sigs)
        self.file_tpq.append(int(st.tpq))

    def arrays(self) -> dict[str, np.ndarray]:
        def offsets(lengths: list[int]) -> np.ndarray:
            out = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(np.asarray(lengths, dtype=np.int64), out=out[1:])
            return out

        return {
            "tokens": np.concatenate(self.tokens) if self.tokens else np.zeros(0, np.uint16),
            "bar_tok_off": offsets(self.bar_len),
            "bar_controls": (np.concatenate(self.controls) if self.controls
                             else np.zeros((0, N_CONTROLS), dtype=np.int8)),
            "track_bar_off": offsets(self.track_nbars),
            "track_program": np.asarray(self.track_program, dtype=np.int16),
            "track_is_drum": np.asarray(self.track_is_drum, dtype=np.uint8),
            "track_index": np.asarray(self.track_index, dtype=np.int32),
            "file_track_off": offsets(self.file_ntracks),
            "file_grid_off": offsets(self.file_nbars),
            "bar_ticks": np.asarray(self.bar_ticks, dtype=np.int64),
            "time_sigs": np.asarray(self.time_sigs, dtype=np.int16).reshape(-1, 2),
            "file_tpq": np.asarray(self.file_tpq, dtype=np.int32),
        }


def _file_slices(arrs: dict[str, np.ndarray], f: int) -> dict[str, np.ndarray]:
    """The arrays of file ``f`` alone, offsets rebased to 0."""
    t0, t1 = int(arrs["file_track_off"][f]), int(arrs["file_track_off"][f + 1])
    b0, b1 = int(arrs["track_bar_off"][t0]), int(arrs["track_bar_off"][t1])
    k0, k1 = int(arrs["bar_tok_off"][b0]), int(arrs["bar_tok_off"][b1])
    g0, g1 = int(arrs["file_grid_off"][f]), int(arrs["file_grid_off"][f + 1])
    return {
        "tokens": arrs["tokens"][k0:k1],
        "bar_tok_off": arrs["bar_tok_off"][b0:b1 + 1] - k0,
        "bar_controls": arrs["bar_controls"][b0:b1],
        "track_bar_off": arrs["track_bar_off"][t0:t1 + 1] - b0,
        "track_program": arrs["track_program"][t0:t1],
        "track_is_drum": arrs["track_is_drum"][t0:t1],
        "track_index": arrs["track_index"][t0:t1],
        "file_track_off": np.array([0, t1 - t0], dtype=np.int64),
        "file_grid_off": np.array([0, g1 - g0], dtype=np.int64),
        "bar_ticks": arrs["bar_ticks"][g0 + f:g1 + f + 1],
        "time_sigs": arrs["time_sigs"][g0:g1],
        "file_tpq": arrs["file_tpq"][f:f + 1],
    }


class _SplitWriter:
    """Streams files' arrays into raw ``.bin`` files of one split, rebasing offsets as it goes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        # The files stay open for the writer's lifetime; the ExitStack closes them in finish() / abort().
        self._files = contextlib.ExitStack()
        self.handles = {}
        for name in _ARRAY_DTYPES:
            path = folder / f"{name}.bin{_TMP_SUFFIX}"
            self.handles[name] = self._files.enter_context(open(path, "wb"))  # noqa: SIM115
        self.lengths = dict.fromkeys(_ARRAY_DTYPES, 0)
        jsonl = folder / f"files.jsonl{_TMP_SUFFIX}"
        self.files_jsonl = self._files.enter_context(open(jsonl, "w", encoding="utf-8"))  # noqa: SIM115
        for name in _OFFSET_ARRAYS:  # offset arrays start with a 0
            self._write(name, np.zeros(1, dtype=np.int64))
        self.n_files = 0

    def _write(self, name: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=_ARRAY_DTYPES[name])
        self.handles[name].write(arr.tobytes())
        self.lengths[name] += arr.shape[0]

    def add(self, one: dict[str, np.ndarray], meta: dict) -> None:
        rows = {"tokens": self.lengths["tokens"], "bar_tok_off": self.lengths["bar_controls"],
                "track_bar_off": self.lengths["track_program"], "file_track_off": self.lengths["file_tpq"],
                "file_grid_off": self.lengths["time_sigs"]}
        base = {"bar_tok_off": rows["tokens"], "track_bar_off": rows["bar_tok_off"],
                "file_track_off": rows["track_bar_off"], "file_grid_off": rows["file_grid_off"]}
        for name in _ARRAY_DTYPES:
            arr = one[name]
            if name in _OFFSET_ARRAYS:
                arr = arr[1:] + base[name]
            self._write(name, arr)
        self.files_jsonl.write(json.dumps(meta, sort_keys=True) + "\n")
        self.n_files += 1

    def abort(self) -> None:
        """Close the files without publishing them (the temp folder is removed by the next run)."""
        self._files.close()

    def finish(self) -> dict[str, dict]:
        """Close the files, move them to their final names and write ``arrays.json``."""
        self._files.close()
        schema = {}
        for name, dtype in _ARRAY_DTYPES.items():
            shape = [self.lengths[name]] + ([N_CONTROLS] if name == "bar_controls" else [])
            if name == "time_sigs":
                shape = [self.lengths[name], 2]
            schema[name] = {"dtype": np.dtype(dtype).str, "shape": shape}
        for name in _ARRAY_DTYPES:
            os.replace(self.folder / f"{name}.bin{_TMP_SUFFIX}", self.folder / f"{name}.bin")
        os.replace(self.folder / f"files.jsonl{_TMP_SUFFIX}", self.folder / "files.jsonl")
        _atomic_write_json(self.folder / "arrays.json", {"format_version": FORMAT_VERSION, "arrays": schema,
                                                         "n_files": self.n_files})
        return schema


def _atomic_write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def _save_shard(path: Path, records: list[dict], arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, records=np.frombuffer(json.dumps(records).encode("utf-8"), dtype=np.uint8), **arrays)


def _load_shard(path: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    with np.load(path) as z:
        records = json.loads(z["records"].tobytes().decode("utf-8"))
        arrays = {name: z[name] for name in _ARRAY_DTYPES}
    return records, arrays


# --------------------------------------------------------------------------------------------------------
# Shards


@dataclass
class _ShardTask:
    key: str
    source_id: int
    meter: tuple[int, int] | None
    members: list[_Member]


def _run_shard(task: _ShardTask) -> tuple[str, list[dict], dict[str, np.ndarray]]:
    """Worker: process every member of a shard; encoded files' arrays follow their records' order."""
    builder = _ArrayBuilder()
    records = []
    for m in task.members:
        data, error = m.data, m.error
        if data is None and m.path is not None and error is None:
            try:
                data = m.path.read_bytes()
            except OSError as exc:
                error = str(exc)
        rec, st = _process_member(m.name, data, error, task.meter)
        rec["source"] = task.source_id
        if st is not None:
            builder.add(st)
        records.append(rec)
    return task.key, records, builder.arrays()


def _shard_key(settings_hash: str, label: str, members: list[_Member]) -> str:
    h = hashlib.sha1(settings_hash.encode())
    h.update(label.encode())
    for m in members:
        h.update(b"\0" + m.name.encode("utf-8", "surrogateescape") + b"\0" + m.stamp.encode())
    return h.hexdigest()[:20]


def _iter_tasks(sources: list[Source | BytesSource], shard_size: int, settings_hash: str,
                done: set[str]) -> Iterator[_ShardTask | tuple[str, int]]:
    """Yield a task per unfinished shard, or (key, source index) of each finished one."""
    for source_id, src in enumerate(sources):
        chunk: list[_Member] = []
        for member in _iter_members(src):
            chunk.append(member)
            if len(chunk) == shard_size:
                yield _make_task(source_id, src, chunk, settings_hash, done)
                chunk = []
        if chunk:
            yield _make_task(source_id, src, chunk, settings_hash, done)


def _make_task(source_id: int, src: Source | BytesSource, chunk: list[_Member], settings_hash: str,
               done: set[str]) -> _ShardTask | tuple[str, int]:
    key = _shard_key(settings_hash, src.label, chunk)
    if key in done:
        return key, source_id
    return _ShardTask(key, source_id, src.meter_override, chunk)


# --------------------------------------------------------------------------------------------------------
# Split assignment


def assign_split(content: str, splits: Sequence[float] = (0.9, 0.05, 0.05), seed: int = 0) -> str:
    """Split of a file from its content hash alone: same file, same split, whatever else is in the corpus."""
    u = int.from_bytes(hashlib.sha1(f"{seed}:{content}".encode()).digest()[:8], "big") / 2.0 ** 64
    acc = 0.0
    for name, frac in zip(SPLITS, splits):
        acc += frac
        if u < acc:
            return name
    return next(name for name, frac in zip(reversed(SPLITS), reversed(splits)) if frac > 0)


def _check_splits(splits: Sequence[float]) -> tuple[float, float, float]:
    vals = tuple(float(s) for s in splits)
    if len(vals) != 3 or any(v < 0 for v in vals) or abs(sum(vals) - 1.0) > 1e-6 or vals[0] <= 0:
        raise DataError("splits must be three non-negative fractions (train, valid, test) summing to 1",
                        argument="splits", value=splits, fix="use e.g. (0.9, 0.05, 0.05)")
    return vals  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------
# Entry point


@dataclass
class PrepareReport:
    """What ``prepare_corpus`` did; the same numbers are in ``out_dir/manifest.json``."""

    out_dir: Path
    n_files: int
    """MIDI files seen (every .mid/.midi member of every source)."""
    n_kept: int
    """Unique valid files written to the splits."""
    dropped: dict[str, int]
    """Files dropped, per reason (see ``REASONS``)."""
    per_split: dict[str, dict[str, int]]
    """Per split: files, tracks, bars, tokens."""
    per_source: dict[str, dict[str, int]]
    """Per source label: files seen, kept, and drops per reason."""
    shards_done: int
    """Shards processed in this run."""
    shards_skipped: int
    """Shards found finished from an earlier run and reused."""
    seconds: float
    """Wall time of the run."""
    vocab_hash: str = ""
    """Hash of the tokenizer vocabulary the ids refer to."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else: ``drop_examples`` lists up to 10 dropped files per reason (with the error text)."""

    @property
    def files_per_second(self) -> float:
        """Files seen per second of wall time (shards skipped count as seen)."""
        return self.n_files / self.seconds if self.seconds > 0 else float("inf")


def vocab_hash(vocab: Any) -> str:
    """sha1 of the vocabulary's id -> name table (what the stored base ids mean)."""
    h = hashlib.sha1()
    for i in range(int(vocab.size)):
        h.update(vocab.name(i).encode("utf-8") + b"\n")
    return h.hexdigest()


def _versions() -> dict[str, str]:
    from importlib import metadata
    out = {"python": platform.python_version(), "numpy": np.__version__, "format": str(FORMAT_VERSION)}
    for pkg in ("midirwkv", "symusic", "miditok"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def prepare_corpus(
    sources: Sequence[SourceLike],
    out_dir: Path | str,
    *,
    vocab: Any = None,
    splits: Sequence[float] = (0.9, 0.05, 0.05),
    seed: int = 0,
    workers: int = 2,
    min_bars: int = 8,
    min_notes: int = 101,
    progress: bool = True,
    shard_size: int = 256,
    encoder: Callable[..., Any] | None = None,
) -> PrepareReport:
    """Scan, validate, deduplicate, split and tokenise MIDI sources into a memory-mapped token cache.

    Args:
        sources: folders, ``.tar.gz`` archives (read in place) or :class:`BytesSource` s. A string
            ``"path::4/4"`` reads every file of that source in 4/4 (POP909 declares 1/4).
        out_dir: output folder; ``shards/`` in it keeps finished work, so a rerun resumes.
        vocab: a ``music.vocab.Vocab``, the path of a tokenizer JSON, or None for the shipped tokenizer.
        splits: fractions of unique files for (train, valid, test), assigned by content hash.
        seed: salt of the split hash (same seed, same split of every file).
        workers: processes; 1 runs in this process.
        min_bars: drop files with fewer bars (on the declared, or overridden, meter grid).
        min_notes: drop files with fewer notes (the paper kept files with more than 100).
        progress: show tqdm bars on stderr.
        shard_size: files per shard (the unit of resume and of parallel work).
        encoder: ``f(score, vocab, meter_override) -> ScoreTokens``, picklable; default the music layer's
            ``remi.encode_score``.

    Returns:
        A :class:`PrepareReport`; ``out_dir/manifest.json`` has the same counts.
    """
    t_start = time.perf_counter()
    split_fracs = _check_splits(splits)
    for name, value, lo in (("workers", workers, 1), ("min_bars", min_bars, 0), ("min_notes", min_notes, 0),
                            ("shard_size", shard_size, 1)):
        if not isinstance(value, int) or value < lo:
            raise DataError(f"{name} must be an integer >= {lo}", argument=name, value=value,
                            fix=f"pass an int >= {lo}")
    srcs = _resolve_sources(sources)
    out = Path(out_dir)
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)

    vocab_obj, vocab_spec = _resolve_vocab(vocab)
    vhash = vocab_hash(vocab_obj)
    settings = _Settings(min_bars, min_notes, vocab_spec, encoder)
    enc_name = "default" if encoder is None else f"{encoder.__module__}.{encoder.__qualname__}"
    settings_hash = hashlib.sha1(json.dumps(
        [FORMAT_VERSION, vhash, min_bars, min_notes, enc_name, CONTENT_STEPS_PER_QUARTER]).encode()).hexdigest()

    done = {p.stem for p in shard_dir.glob("*.npz")}
    shard_keys: list[tuple[str, int]] = []  # (key, source index in this run), in reading order
    n_done = n_skipped = 0
    bar = _progress(progress, "prepare", "files")
    tasks = _iter_tasks(srcs, shard_size, settings_hash, done)

    def on_result(key: str, records: list[dict], arrays: dict[str, np.ndarray]) -> None:
        _save_shard(shard_dir / f"{key}.npz", records, arrays)
        if bar is not None:
            bar.update(len(records))

    if workers == 1:
        # A picklable vocab object is passed as is; in-process runs just reuse it.
        _worker_init(settings, vocab_obj)
        for task in tasks:
            if isinstance(task, tuple):
                shard_keys.append(task)
                n_skipped += 1
                continue
            shard_keys.append((task.key, task.source_id))
            on_result(*_run_shard(task))
            n_done += 1
    else:
        ctx = multiprocessing.get_context("spawn")
        # Bound the shards in flight so a big archive is not read into memory ahead of the workers.
        slots = threading.BoundedSemaphore(2 * workers)

        def feed() -> Iterator[_ShardTask]:
            for task in tasks:
                if isinstance(task, tuple):
                    shard_keys.append(task)
                    skipped_keys.append(task)
                    continue
                shard_keys.append((task.key, task.source_id))
                slots.acquire()
                yield task

        skipped_keys: list[tuple[str, int]] = []
        worker_vocab = None if vocab_spec is not None or vocab is None else vocab_obj
        with ctx.Pool(workers, initializer=_worker_init, initargs=(settings, worker_vocab)) as pool:
            for result in pool.imap_unordered(_run_shard, feed()):
                slots.release()
                on_result(*result)
                n_done += 1
        n_skipped = len(skipped_keys)
    if bar is not None:
        bar.close()

    report = _merge(out, srcs, shard_keys, split_fracs, seed, progress)
    report.shards_done, report.shards_skipped = n_done, n_skipped
    report.seconds = time.perf_counter() - t_start
    report.vocab_hash = vhash
    manifest = {
        "format_version": FORMAT_VERSION,
        "n_files": report.n_files, "n_kept": report.n_kept,
        "dropped": report.dropped, "per_split": report.per_split, "per_source": report.per_source,
        "drop_examples": report.extra.get("drop_examples", {}),
        "sources": [s.label for s in srcs],
        "settings": {"splits": list(split_fracs), "seed": seed, "min_bars": min_bars, "min_notes": min_notes,
                     "shard_size": shard_size, "encoder": enc_name,
                     "content_steps_per_quarter": CONTENT_STEPS_PER_QUARTER},
        "vocab_hash": vhash, "vocab_size": int(vocab_obj.size),
        "versions": _versions(),
        "shards": [key for key, _ in shard_keys],
        "seconds": round(report.seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _atomic_write_json(out / "manifest.json", manifest)
    return report


def _resolve_vocab(vocab: Any) -> tuple[Any, str | None]:
    if vocab is None or isinstance(vocab, (str, Path)):
        from midirwkv.music.vocab import Vocab
        spec = None if vocab is None else str(vocab)
        return Vocab.load(spec), spec
    if not hasattr(vocab, "size") or not hasattr(vocab, "name"):
        raise DataError("vocab must be a Vocab, a tokenizer JSON path or None", argument="vocab", value=vocab,
                        fix="pass midirwkv.music.vocab.Vocab.load(...) or None for the shipped tokenizer")
    return vocab, None


def _progress(enabled: bool, desc: str, unit: str, total: int | None = None) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(desc=desc, unit=unit, total=total, file=sys.stderr, dynamic_ncols=True)


def _merge(out: Path, srcs: list[Source | BytesSource], shard_keys: list[tuple[str, int]],
           splits: tuple[float, float, float], seed: int, progress: bool) -> PrepareReport:
    """Deduplicate over every shard of this run, assign splits and write the split folders."""
    shard_dir = out / "shards"
    # Until the new manifest is written, the folder does not claim to hold a finished cache.
    (out / "manifest.json").unlink(missing_ok=True)
    # Pass 1: records only (small), to decide which files are kept and where they go.
    all_recs: list[tuple[int, int, dict]] = []
    for s, (key, source_id) in enumerate(shard_keys):
        with np.load(shard_dir / f"{key}.npz") as z:
            recs = json.loads(z["records"].tobytes().decode("utf-8"))
        for r, rec in enumerate(recs):
            # A shard reused from an earlier run may have had another source index there.
            rec["source"] = source_id
            all_recs.append((s, r, rec))
    order = sorted(range(len(all_recs)), key=lambda i: (all_recs[i][2]["source"], all_recs[i][2]["name"], i))
    seen_sha: set[str] = set()
    seen_content: set[str] = set()
    dropped: Counter[str] = Counter()
    per_source: dict[str, Counter[str]] = {s.label: Counter() for s in srcs}
    assignment: dict[tuple[int, int], str] = {}
    examples: dict[str, list[dict]] = {}
    for i in order:
        s, r, rec = all_recs[i]
        label = srcs[rec["source"]].label
        per_source[label]["files"] += 1
        reason = rec["reason"]
        if reason is None:
            if rec["sha1"] in seen_sha:
                reason = "duplicate_file"
            elif rec["content"] in seen_content:
                reason = "duplicate_content"
        if "sha1" in rec:
            seen_sha.add(rec["sha1"])
        if reason is None:
            seen_content.add(rec["content"])
            assignment[(s, r)] = assign_split(rec["content"], splits, seed)
            per_source[label]["kept"] += 1
        else:
            dropped[reason] += 1
            per_source[label][reason] += 1
            if len(examples.setdefault(reason, [])) < 10:
                examples[reason].append({"source": label, "name": rec["name"],
                                         **({"detail": rec["detail"]} if rec.get("detail") else {})})

    # Pass 2: copy the kept files' arrays into the split folders (built aside, then renamed).
    tmp_root = out / f"splits{_TMP_SUFFIX}"
    if tmp_root.exists():
        shutil.rmtree(tmp_root)
    stack = contextlib.ExitStack()
    writers = {name: _SplitWriter(tmp_root / name) for name in SPLITS}
    for w in writers.values():
        stack.callback(w.abort)
    per_split = {name: Counter() for name in SPLITS}
    bar = _progress(progress, "merge", "shards", total=len(shard_keys))
    by_shard: dict[int, list[int]] = {}
    for s, r in assignment:
        by_shard.setdefault(s, []).append(r)
    # Files are written in reading order (shard by shard), which streams: one shard in memory at a time.
    for s, (key, source_id) in enumerate(shard_keys):
        if s in by_shard:
            recs, arrays = _load_shard(shard_dir / f"{key}.npz")
            # Encoded files are stored in record order; map record index -> encoded index.
            enc_index = {}
            for r, rec in enumerate(recs):
                if rec["reason"] is None:
                    enc_index[r] = len(enc_index)
            for r in sorted(by_shard[s]):
                rec = recs[r]
                one = _file_slices(arrays, enc_index[r])
                meta = {"source": srcs[source_id].label, "name": rec["name"], "sha1": rec["sha1"],
                        "content": rec["content"], "n_notes": rec["n_notes"], "track_names": rec["track_names"]}
                split = assignment[(s, r)]
                writers[split].add(one, meta)
                c = per_split[split]
                c["files"] += 1
                c["tracks"] += len(one["track_program"])
                c["bars"] += len(one["bar_controls"])
                c["tokens"] += len(one["tokens"])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    with stack:
        for w in writers.values():
            w.finish()
    for name in SPLITS:
        final = out / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp_root / name, final)
    tmp_root.rmdir()
    return PrepareReport(
        out_dir=out, n_files=len(all_recs), n_kept=len(assignment),
        dropped={k: dropped[k] for k in REASONS if dropped[k]},
        per_split={name: {k: int(per_split[name][k]) for k in ("files", "tracks", "bars", "tokens")}
                   for name in SPLITS},
        per_source={label: dict(sorted(c.items())) for label, c in per_source.items()},
        shards_done=0, shards_skipped=0, seconds=0.0, extra={"drop_examples": examples},
    )


__all__ = [
    "REASONS",
    "SPLITS",
    "BytesSource",
    "PrepareReport",
    "Source",
    "assign_split",
    "content_hash",
    "controls_to_rows",
    "count_bars",
    "gigamidi_rows",
    "gigamidi_source",
    "load_gigamidi",
    "prepare_corpus",
    "read_member_bytes",
    "unwrap_midi_bytes",
    "vocab_hash",
]
