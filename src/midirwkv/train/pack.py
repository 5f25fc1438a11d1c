"""Pack what a one-shot accelerator run needs into one folder: ``midirwkv pack-device``.

``midirwkv pack-device --data CACHE_DIR -o device [--max-mib 45] [--workers 2]``

The GPU machine has numpy, torch, safetensors and tokenizers but neither symusic nor miditok, and takes at most
64 MiB with the working tree. So the training samples are built here, by the music layer's sample builder through
the data layer's :class:`~midirwkv.data.dataset.SampleDataset`: exactly the samples a CPU run with the same seed
trains on first, in its order (epoch 0's positions 0, 1, ... of the seeded file order, then epoch 1's), until the
size budget is spent. A sample is stored as its ids (uint16) and the first position of its infilled part; its
loss mask is a function of its ids (``given_ids``), so the device rebuilds the batch the loop would. Samples go
into parts of ``part_samples`` (zlib-compressed ``.npz``); parts already written with the same settings are
reused, so an interrupted pack resumes. The folder (:mod:`midirwkv.train.device` reads it)::

    pack.json          settings, counts, the share of the train split, the cache's manifest, given_ids
    tokenizer.json     the tokenizer of the ids
    train-0000.npz     training samples (ids, offsets, span_start, key), one part per part_samples samples
    valid.safetensors  the CPU runs' fixed validation batches (``train.batches.validation_batches``) as tensors
    start/             optional (``start``): a checkpoint the device run may start from; the bundled model
                       travels with the working tree and needs no copy
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from midirwkv.config import TrainConfig
from midirwkv.errors import BadRequestError, DataError
from midirwkv.files import atomic_path, save_safetensors
from midirwkv.train.device_pack import (
    BUNDLED_MODEL,
    MIB,
    PACK_FORMAT,
    PACK_META,
    PACK_START,
    PACK_TOKENIZER,
    PACK_VALID,
    TRAIN_PART,
    valid_tensors,
)

TRAVEL_LIMIT = 64 * MIB
"""What a device call may send: the working tree (tracked and untracked-not-ignored files) plus carried paths."""
_META_ROOM = 256 * 1024
"""Bytes kept free in the budget for pack.json."""


def default_pack_config(data_dir: str | Path, out_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The sample and validation settings of the CPU runs (the bundled model's: context 2048, validation
    6 batches of 4 samples of the valid split, val_seed 0, target-last layout, augmentation on)."""
    fields: dict[str, Any] = {"data_dir": str(data_dir), "out_dir": str(out_dir), "max_steps": 1, "ctx_len": 2048,
                              "micro_batch": 4, "eval_batches": 6}
    fields.update(overrides)
    return TrainConfig(**fields)


# --------------------------------------------------------------------------------------------------------
# Building parts (in this process or in worker processes)

_WORKER: dict[str, Any] = {}


def _open(data_dir: str, tokenizer: str) -> tuple[Any, Any]:
    from midirwkv.data.dataset import TokenCache
    from midirwkv.music.vocab import Vocab

    key = (data_dir, tokenizer)
    if _WORKER.get("key") != key:
        _WORKER.update(key=key, cache=TokenCache(data_dir, "train"), vocab=Vocab.load(tokenizer))
    return _WORKER["cache"], _WORKER["vocab"]


def given_ids(vocab: Any) -> list[int]:
    """Ids that are never training targets (``music.examples``: infill markers, PAD and control tokens)."""
    given = {vocab.infill_bar, vocab.infill_track, vocab.fillbar_start, vocab.pad}
    return [i for i in range(vocab.size) if i in given or vocab.is_control(i)]


def build_part(data_dir: str, tokenizer: str, cfg: TrainConfig, first: int, count: int
               ) -> dict[str, np.ndarray]:
    """Samples ``first .. first + count - 1`` of the CPU training stream of ``cfg.seed`` (sample g is position
    ``g % n_files`` of epoch ``g // n_files``) as arrays; checks that each loss mask is what the ids imply."""
    from midirwkv.data.dataset import SampleDataset

    cache, vocab = _open(data_dir, tokenizer)
    predicted = np.ones(vocab.size, dtype=bool)
    predicted[given_ids(vocab)] = False
    n_files = len(cache)
    ids, offsets, spans = [], [0], []
    g = first
    while g < first + count:
        epoch, pos = divmod(g, n_files)
        take = min(first + count - g, n_files - pos)
        ds = SampleDataset(cache, vocab, seed=cfg.seed, epoch=epoch, start_index=pos, ctx_len=cfg.ctx_len,
                           p_track=cfg.p_track, augment_data=cfg.augment, layout=cfg.prompt_layout)
        for s in itertools.islice(ds, take):
            n = len(s.ids)
            where = np.flatnonzero(s.target_mask)
            span = int(where[0]) if len(where) else n
            if not (np.array_equal(predicted[s.ids], s.loss_mask) and
                    np.array_equal(s.target_mask, np.arange(n) >= span)):
                raise DataError("a training sample's masks are not what its ids imply", argument="music.examples",
                                value=(epoch, pos), fix="update train.pack.given_ids to the sample builder's rules")
            ids.append(s.ids.astype(np.uint16))
            offsets.append(offsets[-1] + n)
            spans.append(span)
        g += take
    return {"ids": np.concatenate(ids), "offsets": np.asarray(offsets, dtype=np.int64),
            "span_start": np.asarray(spans, dtype=np.int32)}


def _build_task(args: tuple) -> tuple[int, dict[str, np.ndarray]]:
    index, data_dir, tokenizer, cfg, first, count = args
    return index, build_part(data_dir, tokenizer, cfg, first, count)


def _write_part(path: Path, arrays: dict[str, np.ndarray], key: str) -> int:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, key=np.array(key), **arrays)
    return path.stat().st_size


def _read_part(path: Path, key: str, count: int) -> dict[str, np.ndarray] | None:
    """A part written earlier with the same settings, or None."""
    try:
        with np.load(path) as z:
            if str(z["key"]) != key or len(z["span_start"]) != count:
                return None
            return {"ids": z["ids"], "offsets": z["offsets"], "span_start": z["span_start"]}
    except (OSError, KeyError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------------
# The pack


def _travel_bytes(folder: Path) -> int | None:
    """Bytes of the git working tree holding ``folder`` that a device call sends (tracked and untracked files
    that git does not ignore), or None outside git."""
    try:
        root = Path(subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"], capture_output=True,
                                   text=True, check=True).stdout.strip())
        names = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                               capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for name in names:
        path = root / name.decode("utf-8", "surrogateescape")
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def _is_ignored(folder: Path) -> bool | None:
    try:
        proc = subprocess.run(["git", "-C", str(folder.parent), "check-ignore", "-q", str(folder.resolve())],
                              capture_output=True, check=False)
    except OSError:
        return None
    return {0: True, 1: False}.get(proc.returncode)


def _copy_start(start: Path, dest: Path) -> int:
    from midirwkv.model.checkpoint import load_checkpoint, weight_files

    load_checkpoint(start)       # a readable checkpoint, or a clear error before anything is copied
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for path in [*weight_files(start), *(start / n for n in ("config.json", "tokenizer.json", "meta.json",
                                                               "train_log.csv"))]:
        if path.is_file():
            shutil.copyfile(path, dest / path.name)
    return sum(p.stat().st_size for p in dest.iterdir())


def pack_device(data_dir: str | Path, out_dir: str | Path, cfg: TrainConfig | None = None, *,
                tokenizer: str | Path | None = None, max_mib: float = 45.0, part_samples: int = 1024,
                max_samples: int = 0, workers: int = 1, start: str | Path | None = None,
                progress: bool = True) -> dict:
    """Write the pack of token cache ``data_dir`` into ``out_dir`` (see the module docstring); returns pack.json.

    ``cfg`` holds the sample settings (seed, ctx_len, p_track, augment, prompt_layout) and the validation settings
    (val_split, val_seed, eval_batches, micro_batch); default :func:`default_pack_config`. ``tokenizer``: the ids'
    tokenizer (default: the bundled model's). The pack holds at most ``max_mib`` MiB (and ``max_samples``
    training samples when > 0); ``workers`` processes build the parts.
    """
    from midirwkv.data.dataset import TokenCache
    from midirwkv.music.vocab import Vocab
    from midirwkv.train.batches import validation_batches
    from midirwkv.train.distributed import DistInfo
    from midirwkv.train.loop import _check_vocab, _data_manifest

    t0 = time.perf_counter()
    data_dir, out = Path(data_dir), Path(out_dir)
    cfg = cfg or default_pack_config(data_dir, out)
    tok = Path(tokenizer) if tokenizer else BUNDLED_MODEL / "tokenizer.json"
    for name, value, ok in (("max_mib", max_mib, max_mib > 0), ("part_samples", part_samples, part_samples >= 1),
                            ("max_samples", max_samples, max_samples >= 0), ("workers", workers, workers >= 1)):
        if not ok:
            raise BadRequestError(f"invalid pack setting {name}", argument=name, value=value,
                                  fix="use a positive number (max_samples: 0 for no limit)")
    if not tok.is_file():
        raise BadRequestError("tokenizer file not found", argument="tokenizer", value=str(tok),
                              fix="pass the tokenizer JSON the models are trained with")
    manifest = _data_manifest(data_dir)
    vocab = Vocab.load(tok)
    _check_vocab(manifest, vocab, data_dir)
    if vocab.size > 65535:
        raise BadRequestError("the pack stores ids as uint16", argument="tokenizer", value=vocab.size,
                              fix="use a vocabulary of at most 65535 ids")
    train_files = len(TokenCache(data_dir, "train"))
    out.mkdir(parents=True, exist_ok=True)
    (out / PACK_META).unlink(missing_ok=True)      # a pack is complete once its pack.json is written again
    budget = int(max_mib * MIB)

    def say(text: str) -> None:
        if progress:
            sys.stderr.write(f"pack: {text}\n")
            sys.stderr.flush()

    # fixed parts first: the tokenizer, the validation batches, the start checkpoint
    shutil.copyfile(tok, out / PACK_TOKENIZER)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)
    valid = validation_batches(TokenCache(data_dir, cfg.val_split), vocab, cfg, info)
    tensors, vmeta = valid_tensors(valid)
    save_safetensors(tensors, out / PACK_VALID, metadata=vmeta)
    used = (out / PACK_TOKENIZER).stat().st_size + (out / PACK_VALID).stat().st_size + _META_ROOM
    if start:
        used += _copy_start(Path(start), out / PACK_START)
    elif (out / PACK_START).exists():
        shutil.rmtree(out / PACK_START)
    if used > budget:
        raise BadRequestError("the fixed files alone exceed the pack's size", argument="max_mib", value=max_mib,
                              fix=f"allow at least {math.ceil(used / MIB) + 1} MiB, or drop --start")
    say(f"tokenizer, {len(valid)} validation batches{' and the start checkpoint' if start else ''}: "
        f"{used / MIB:.1f} MiB")

    settings = {"format": PACK_FORMAT, "vocab_hash": manifest.get("vocab_hash"), "n_files": train_files,
                "manifest_created": manifest.get("created"),
                "tokenizer_sha1": hashlib.sha1(tok.read_bytes()).hexdigest(), "seed": cfg.seed,
                "ctx_len": cfg.ctx_len, "p_track": cfg.p_track, "augment": cfg.augment,
                "prompt_layout": cfg.prompt_layout, "part_samples": part_samples}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    limit = max_samples or 10 ** 12
    n_parts = min(math.ceil(limit / part_samples), math.ceil(budget / (100 * part_samples)) + 1)

    def counts(index: int) -> int:
        return min(part_samples, limit - index * part_samples)

    parts: list[dict] = []
    stats = {"samples": 0, "tokens": 0, "span": 0}

    def keep(index: int, arrays: dict[str, np.ndarray], size: int) -> None:
        n = len(arrays["span_start"])
        lengths = np.diff(arrays["offsets"])
        parts.append({"name": TRAIN_PART.format(index=index), "samples": n, "tokens": int(lengths.sum()),
                      "bytes": size})
        stats["samples"] += n
        stats["tokens"] += int(lengths.sum())
        stats["span"] += int((lengths - arrays["span_start"]).sum())

    def tasks():
        for index in range(n_parts):
            if counts(index) <= 0:
                return
            yield index, str(data_dir), str(tok), cfg, index * part_samples, counts(index)

    pool = None
    try:
        # reuse the parts an interrupted pack wrote with the same settings, then build the rest
        for index in range(n_parts):
            path = out / TRAIN_PART.format(index=index)
            arrays = _read_part(path, key, counts(index)) if counts(index) > 0 and path.is_file() else None
            if arrays is None or used + path.stat().st_size > budget:
                break
            keep(index, arrays, path.stat().st_size)
            used += path.stat().st_size
        if parts:
            say(f"reused {len(parts)} parts written earlier ({stats['samples']} samples)")
        first_new = len(parts)
        todo = [t for t in tasks() if t[0] >= first_new]
        if workers > 1:
            import multiprocessing

            pool = multiprocessing.get_context("fork").Pool(workers)
            results = pool.imap(_build_task, todo)
        else:
            results = map(_build_task, todo)
        for index, arrays in results:
            path = out / TRAIN_PART.format(index=index)
            size = _write_part(path, arrays, key)
            if used + size > budget:
                path.unlink()
                break
            keep(index, arrays, size)
            used += size
            say(f"part {index}: {stats['samples']} samples, {stats['tokens'] / 1e6:.1f} M tokens, "
                f"{used / MIB:.1f} MiB, {time.perf_counter() - t0:.0f} s")
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    kept = {p["name"] for p in parts}
    for stray in out.glob("train-*.npz"):
        if stray.name not in kept:
            stray.unlink()
    if not parts:
        raise BadRequestError("no training part fits in the pack", argument="max_mib", value=max_mib,
                              fix="allow more MiB, or use a smaller --part-samples")

    n = stats["samples"]
    share = (f"{min(n, train_files)} of {train_files} train files ({100 * min(n, train_files) / train_files:.1f} %)"
             f", {n / train_files:.2f} samples per file")
    from midirwkv.music.infill import OTHER_ORDER

    meta = {
        "format": PACK_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data_dir": str(data_dir),
        "data_manifest": manifest,
        "tokenizer_sha1": settings["tokenizer_sha1"],
        "vocab_size": vocab.size,
        "pad_id": vocab.pad,
        "given_ids": given_ids(vocab),
        "train": {"key": key, "seed": cfg.seed, "ctx_len": cfg.ctx_len, "p_track": cfg.p_track,
                  "augment": cfg.augment, "prompt_layout": cfg.prompt_layout, "other_order": OTHER_ORDER,
                  "part_samples": part_samples,
                  "samples": n, "tokens": stats["tokens"], "span_tokens": stats["span"],
                  "train_files": train_files, "passes_over_files": round(n / train_files, 4), "share": share,
                  "parts": parts},
        "valid": {"val_split": cfg.val_split, "val_seed": cfg.val_seed, "eval_batches": cfg.eval_batches,
                  "micro_batch": cfg.micro_batch, "ctx_len": cfg.ctx_len, "p_track": cfg.p_track,
                  "prompt_layout": cfg.prompt_layout, "samples": sum(int(b.input_ids.shape[0]) for b in valid),
                  "tokens": sum(b.n_tokens for b in valid)},
        "start": PACK_START if start else None,
        "build_s": round(time.perf_counter() - t0, 1),
    }
    with atomic_path(out / PACK_META) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    meta["bytes"] = total
    say(f"{n} samples ({share}), {stats['tokens'] / 1e6:.1f} M tokens, {total / MIB:.1f} MiB in {out}, "
        f"{meta['build_s']:.0f} s")
    tree = _travel_bytes(out)
    if tree is not None:
        say(f"a device call sends {(tree + total) / MIB:.1f} MiB (working tree {tree / MIB:.1f} + pack "
            f"{total / MIB:.1f}; limit {TRAVEL_LIMIT / MIB:.0f})")
        if tree + total > TRAVEL_LIMIT:
            say("WARNING: over the device call's limit: pack with a smaller --max-mib")
        meta["travel_bytes"] = tree + total
    if _is_ignored(out) is False:
        say(f"WARNING: git does not ignore {out}: add it to .gitignore (it must not be committed)")
    return meta
