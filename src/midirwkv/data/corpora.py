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
import hashlib
import json
import multiprocessing
import platform
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from midirwkv.data.arrays import (
    FORMAT_VERSION,
    SPLITS,
    TMP_SUFFIX,
    SplitWriter,
    controls_to_rows,
    file_slices,
    load_shard,
    save_shard,
    write_json,
)
from midirwkv.data.sources import (
    BytesSource,
    Source,
    SourceLike,
    _resolve_sources,
    gigamidi_rows,
    gigamidi_source,
    load_gigamidi,
    read_member_bytes,
)
from midirwkv.data.validate import (
    CONTENT_STEPS_PER_QUARTER,
    REASONS,
    Settings,
    ShardTask,
    content_hash,
    count_bars,
    iter_tasks,
    run_shard,
    unwrap_midi_bytes,
    worker_init,
)
from midirwkv.errors import DataError
from midirwkv.files import replace_folder

# --------------------------------------------------------------------------------------------------------
# Validation and hashing (runs in workers)


# --------------------------------------------------------------------------------------------------------
# Arrays: ScoreTokens <-> flat arrays


# --------------------------------------------------------------------------------------------------------
# Shards


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
    settings = Settings(min_bars, min_notes, vocab_spec, encoder)
    enc_name = "default" if encoder is None else f"{encoder.__module__}.{encoder.__qualname__}"
    settings_hash = hashlib.sha1(json.dumps(
        [FORMAT_VERSION, vhash, min_bars, min_notes, enc_name, CONTENT_STEPS_PER_QUARTER]).encode()).hexdigest()

    done = {p.stem for p in shard_dir.glob("*.npz")}
    shard_keys: list[tuple[str, int]] = []  # (key, source index in this run), in reading order
    n_done = n_skipped = 0
    bar = _progress(progress, "prepare", "files")
    tasks = iter_tasks(srcs, shard_size, settings_hash, done)

    def on_result(key: str, records: list[dict], arrays: dict[str, np.ndarray]) -> None:
        save_shard(shard_dir / f"{key}.npz", records, arrays)
        if bar is not None:
            bar.update(len(records))

    if workers == 1:
        # A picklable vocab object is passed as is; in-process runs just reuse it.
        worker_init(settings, vocab_obj)
        for task in tasks:
            if isinstance(task, tuple):
                shard_keys.append(task)
                n_skipped += 1
                continue
            shard_keys.append((task.key, task.source_id))
            on_result(*run_shard(task))
            n_done += 1
    else:
        ctx = multiprocessing.get_context("spawn")
        # Bound the shards in flight so a big archive is not read into memory ahead of the workers.
        slots = threading.BoundedSemaphore(2 * workers)

        def feed() -> Iterator[ShardTask]:
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
        with ctx.Pool(workers, initializer=worker_init, initargs=(settings, worker_vocab)) as pool:
            for result in pool.imap_unordered(run_shard, feed()):
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
    write_json(out / "manifest.json", manifest)
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
    tmp_root = out / f"splits{TMP_SUFFIX}"
    if tmp_root.exists():
        shutil.rmtree(tmp_root)
    stack = contextlib.ExitStack()
    writers = {name: SplitWriter(tmp_root / name) for name in SPLITS}
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
            recs, arrays = load_shard(shard_dir / f"{key}.npz")
            # Encoded files are stored in record order; map record index -> encoded index.
            enc_index = {}
            for r, rec in enumerate(recs):
                if rec["reason"] is None:
                    enc_index[r] = len(enc_index)
            for r in sorted(by_shard[s]):
                rec = recs[r]
                one = file_slices(arrays, enc_index[r])
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
        replace_folder(tmp_root / name, out / name)
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
