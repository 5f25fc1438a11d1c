"""Read the memory-mapped token cache that ``corpora.prepare_corpus`` writes, and feed training.

- :class:`TokenCache` opens one split lazily: ``len()``, ``cache[i] -> ScoreTokens``, ``n_tokens`` and
  ``iter_bars()`` (the bars BPE training reads).
- :class:`SampleDataset` is a torch ``IterableDataset`` that turns files into training samples with the
  music layer's sample builder. Every sample's randomness comes from ``(seed, epoch, position)``, so a run
  is reproducible whatever the number of ranks and DataLoader workers, and resumes mid-epoch from
  ``start_index``.
- :func:`collate` pads a batch with PAD and returns input ids, shifted targets and the loss mask.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from midirwkv.data.arrays import FORMAT_VERSION, N_CONTROLS, SPLITS
from midirwkv.errors import DataError


def _music_types() -> tuple[type, type, type]:
    """(ScoreTokens, TrackTokens, BarControls) of the music layer."""
    from midirwkv.music.controls import BarControls
    from midirwkv.music.remi import ScoreTokens, TrackTokens
    return ScoreTokens, TrackTokens, BarControls


@functools.lru_cache(maxsize=65536)
def _cached_controls(row: tuple[int, ...], controls_type: type) -> Any:
    """``row_to_controls`` memoised: a corpus holds few distinct rows, and BarControls is immutable."""
    return row_to_controls(row, controls_type)


def row_to_controls(row: Sequence[int], controls_type: type) -> Any:
    """Inverse of ``corpora.controls_to_rows``: -1 -> None, 0/1 -> bool for boolean fields."""
    fields = dataclasses.fields(controls_type)
    if len(fields) != N_CONTROLS:
        raise DataError(f"BarControls must have {N_CONTROLS} fields", argument="controls_type",
                        value=[f.name for f in fields], fix="rebuild the cache with the current music layer")
    values = []
    for f, v in zip(fields, row):
        v = int(v)
        if v < 0:
            values.append(None)
        elif "bool" in str(f.type):
            values.append(bool(v))
        else:
            values.append(v)
    return controls_type(*values)


class TokenCache:
    """One split of a prepared corpus, memory-mapped on first use.

    ``out_dir`` is the folder given to ``prepare_corpus``; ``split`` one of ``"train"``, ``"valid"``,
    ``"test"``. Arrays are opened read-only the first time they are needed (cheap to pickle into
    DataLoader workers before that).
    """

    def __init__(self, out_dir: Path | str, split: str) -> None:
        self.out_dir = Path(out_dir)
        self.split = split
        if split not in SPLITS:
            raise DataError("unknown split", argument="split", value=split, fix=f"use one of {list(SPLITS)}")
        if not (self.out_dir / "manifest.json").is_file():
            raise DataError("no finished token cache here (manifest.json missing)", argument="out_dir",
                            value=str(self.out_dir), fix="run prepare_corpus(...) into this folder first")
        self.folder = self.out_dir / split
        schema_path = self.folder / "arrays.json"
        if not schema_path.is_file():
            raise DataError("split folder is missing its arrays.json", argument="split", value=split,
                            fix="rerun prepare_corpus (finished shards are reused)")
        schema = json.loads(schema_path.read_text(encoding="utf-8"))
        if schema.get("format_version") != FORMAT_VERSION:
            raise DataError("token cache was written by another format version", argument="out_dir",
                            value=schema.get("format_version"), fix="rerun prepare_corpus into a new folder")
        self._schema: dict[str, dict] = schema["arrays"]
        self._n_files = int(schema["n_files"])
        self._arrays: dict[str, np.ndarray] = {}
        self._meta: list[dict] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = {}  # memmaps are reopened in the receiving process
        return state

    def _array(self, name: str) -> np.ndarray:
        arr = self._arrays.get(name)
        if arr is None:
            spec = self._schema[name]
            shape = tuple(spec["shape"])
            if int(np.prod(shape)) == 0:
                arr = np.zeros(shape, dtype=np.dtype(spec["dtype"]))
            else:
                arr = np.memmap(self.folder / f"{name}.bin", dtype=np.dtype(spec["dtype"]), mode="r", shape=shape)
            self._arrays[name] = arr
        return arr

    def __len__(self) -> int:
        return self._n_files

    @property
    def n_tokens(self) -> int:
        """Base tokens stored in this split (all bars of all tracks)."""
        return int(self._schema["tokens"]["shape"][0])

    @property
    def n_bars(self) -> int:
        """Track-bars stored in this split."""
        return int(self._schema["bar_controls"]["shape"][0])

    def file_meta(self, i: int) -> dict:
        """Source, member name, sha1, content hash, note count and track names of file ``i``."""
        if self._meta is None:
            with open(self.folder / "files.jsonl", encoding="utf-8") as fh:
                self._meta = [json.loads(line) for line in fh]
        return self._meta[self._check_index(i)]

    def _check_index(self, i: int) -> int:
        if not isinstance(i, (int, np.integer)):
            raise DataError("file index must be an int", argument="i", value=i, fix="index with an int")
        j = int(i) + (self._n_files if i < 0 else 0)
        if not 0 <= j < self._n_files:
            raise IndexError(f"file index {i} out of range for {self._n_files} files in split {self.split!r}")
        return j

    def __getitem__(self, i: int) -> Any:
        """File ``i`` as the music layer's ``ScoreTokens`` (base ids per bar, ``BarControls`` per bar)."""
        f = self._check_index(i)
        score_cls, track_cls, controls_cls = _music_types()
        tok, bar_off, ctrl = self._array("tokens"), self._array("bar_tok_off"), self._array("bar_controls")
        t0, t1 = (int(x) for x in self._array("file_track_off")[f:f + 2])
        g0, g1 = (int(x) for x in self._array("file_grid_off")[f:f + 2])
        track_bar_off = self._array("track_bar_off")
        names = self.file_meta(f).get("track_names") or [""] * (t1 - t0)
        tracks = []
        for k, t in enumerate(range(t0, t1)):
            b0, b1 = int(track_bar_off[t]), int(track_bar_off[t + 1])
            offs = np.asarray(bar_off[b0:b1 + 1], dtype=np.int64)
            flat = np.asarray(tok[offs[0]:offs[-1]], dtype=np.int64)
            rel = offs - offs[0]
            bars = [flat[rel[j]:rel[j + 1]].tolist() for j in range(b1 - b0)]
            controls = [_cached_controls(tuple(row), controls_cls) for row in np.asarray(ctrl[b0:b1]).tolist()]
            program = int(self._array("track_program")[t])
            tracks.append(track_cls(index=int(self._array("track_index")[t]), program=program,
                                    is_drum=bool(self._array("track_is_drum")[t]), name=names[k], bars=bars,
                                    controls=controls))
        bar_ticks = [int(x) for x in self._array("bar_ticks")[g0 + f:g1 + f + 1]]
        time_sigs = [(int(a), int(b)) for a, b in np.asarray(self._array("time_sigs")[g0:g1])]
        return score_cls(tracks=tracks, bar_ticks=bar_ticks, time_sigs=time_sigs,
                         tpq=int(self._array("file_tpq")[f]))

    def iter_bars(self, *, limit: int | None = None) -> Iterator[list[int]]:
        """Every stored bar's base ids, in storage order (what ``vocab.train_bpe`` takes).

        ``limit`` stops after that many bars. Bars are read in blocks to keep memory flat.
        """
        tok, bar_off = self._array("tokens"), self._array("bar_tok_off")
        n = self.n_bars if limit is None else min(self.n_bars, int(limit))
        block = 65536
        for start in range(0, n, block):
            stop = min(n, start + block)
            offs = np.asarray(bar_off[start:stop + 1], dtype=np.int64)
            flat = np.asarray(tok[offs[0]:offs[-1]], dtype=np.int64)
            rel = offs - offs[0]
            for j in range(stop - start):
                yield flat[rel[j]:rel[j + 1]].tolist()


# --------------------------------------------------------------------------------------------------------
# Training samples


def sample_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The RNG of one sample: a function of (seed, epoch, position in the epoch) only."""
    return np.random.default_rng([int(seed), int(epoch), int(position)])


def epoch_order(n_files: int, seed: int, epoch: int) -> np.ndarray:
    """The file order of one epoch: a permutation seeded by (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch), 2**32 - 1]).permutation(n_files)


def _torch_dataset_base() -> type:
    from torch.utils.data import IterableDataset
    return IterableDataset


class SampleDataset(_torch_dataset_base()):  # type: ignore[misc]
    """Training samples from a :class:`TokenCache`, reproducible and resumable.

    Positions ``start_index, start_index + 1, ...`` of the epoch's file order are dealt to the
    ``world_size`` ranks and each rank's DataLoader workers in blocks of ``block`` positions (set it to the
    per-rank batch size: then rank r's k-th batch holds positions ``[(k*world_size + r)*block, ...)``, so
    after K batches per rank the run resumes exactly at ``start_index = K * block * world_size``).
    Sample ``p`` of epoch ``e`` is ``build(cache[order[p]], vocab, sample_rng(seed, e, p))`` whoever builds it.

    ``build`` defaults to the music layer's ``examples.build_sample``; ``sample_kwargs`` are passed to it.
    """

    def __init__(self, cache: TokenCache, vocab: Any, *, seed: int = 0, epoch: int = 0, start_index: int = 0,
                 rank: int = 0, world_size: int = 1, block: int = 1,
                 build: Callable[..., Any] | None = None, **sample_kwargs: Any) -> None:
        super().__init__()
        for name, value, lo in (("start_index", start_index, 0), ("rank", rank, 0), ("world_size", world_size, 1),
                                ("block", block, 1), ("epoch", epoch, 0)):
            if not isinstance(value, (int, np.integer)) or value < lo:
                raise DataError(f"{name} must be an integer >= {lo}", argument=name, value=value,
                                fix=f"pass an int >= {lo}")
        if rank >= world_size:
            raise DataError("rank must be below world_size", argument="rank", value=rank,
                            fix=f"use a rank in 0..{world_size - 1}")
        if len(cache) == 0:
            raise DataError("the split holds no files", argument="cache", value=f"{cache.out_dir}:{cache.split}",
                            fix="prepare a bigger corpus or use another split")
        self.cache, self.vocab = cache, vocab
        self.seed, self.epoch, self.start_index = int(seed), int(epoch), int(start_index)
        self.rank, self.world_size, self.block = int(rank), int(world_size), int(block)
        self.build = build
        self.sample_kwargs = sample_kwargs

    def __len__(self) -> int:
        """Positions left in the epoch over all ranks and workers."""
        return max(0, len(self.cache) - self.start_index)

    def positions(self, worker_id: int = 0, num_workers: int = 1) -> Iterator[int]:
        """Epoch positions this (rank, worker) builds, in order."""
        slots = self.world_size * num_workers
        slot = self.rank * num_workers + worker_id
        for p in range(self.start_index, len(self.cache)):
            if ((p - self.start_index) // self.block) % slots == slot:
                yield p

    def __iter__(self) -> Iterator[Any]:
        from torch.utils.data import get_worker_info
        info = get_worker_info()
        worker_id, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        build = self.build or _default_builder()
        order = epoch_order(len(self.cache), self.seed, self.epoch)
        for p in self.positions(worker_id, num_workers):
            yield build(self.cache[int(order[p])], self.vocab, sample_rng(self.seed, self.epoch, p),
                        **self.sample_kwargs)


def _default_builder() -> Callable[..., Any]:
    from midirwkv.music import examples
    return examples.build_sample


class Batch(NamedTuple):
    """A padded batch: ``input_ids`` (B, T), ``targets`` (B, T) = ids shifted left, ``loss_mask`` (B, T)."""

    input_ids: Any
    targets: Any
    loss_mask: Any


def _ids_and_mask(sample: Any) -> tuple[Sequence[int], Sequence[int]]:
    if isinstance(sample, dict):
        return sample["ids"], sample["loss_mask"]
    if hasattr(sample, "ids") and hasattr(sample, "loss_mask"):
        return sample.ids, sample.loss_mask
    ids, mask = sample
    return ids, mask


def collate(samples: Sequence[Any], pad_id: int) -> Batch:
    """Pad samples (each with ``ids`` and a per-token ``loss_mask``) to the batch's longest, with PAD.

    Position t predicts ``ids[t + 1]``; ``loss_mask[t]`` is the sample's mask of that target token (0 on
    given tokens such as controls and Infill_Bar, and on padding).
    """
    import torch
    if not samples:
        raise DataError("cannot collate an empty batch", argument="samples", value=0, fix="pass one sample or more")
    pairs = [_ids_and_mask(s) for s in samples]
    for ids, mask in pairs:
        if len(ids) != len(mask) or len(ids) < 2:
            raise DataError("a sample needs >= 2 ids and one mask value per id", argument="samples",
                            value=(len(ids), len(mask)), fix="build samples with music.examples")
    width = max(len(ids) for ids, _ in pairs) - 1
    inputs = torch.full((len(pairs), width), int(pad_id), dtype=torch.long)
    targets = torch.full((len(pairs), width), int(pad_id), dtype=torch.long)
    loss_mask = torch.zeros((len(pairs), width), dtype=torch.float32)
    for row, (ids, mask) in enumerate(pairs):
        ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        mask_t = torch.as_tensor(np.asarray(mask, dtype=np.float32))
        n = ids_t.numel() - 1
        inputs[row, :n] = ids_t[:-1]
        targets[row, :n] = ids_t[1:]
        loss_mask[row, :n] = mask_t[1:]
    return Batch(inputs, targets, loss_mask)


class Collator:
    """Picklable ``collate_fn`` for a DataLoader: ``DataLoader(ds, batch_size=B, collate_fn=Collator(pad))``."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = int(pad_id)

    def __call__(self, samples: Sequence[Any]) -> Batch:
        return collate(samples, self.pad_id)


__all__ = ["Batch", "Collator", "SampleDataset", "TokenCache", "collate", "epoch_order", "row_to_controls",
           "sample_rng"]
