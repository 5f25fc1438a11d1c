"""The pack format, shared by its writer (:mod:`midirwkv.train.pack`, on the CPU machine) and its reader
(:mod:`midirwkv.train.device`, on the lent accelerator): file names, the packed training samples and the fixed
validation batches. Imports neither symusic nor miditok."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from midirwkv.errors import DataError
from midirwkv.train.batches import (
    TrainBatch,
)

PACK_FORMAT = 1


PACK_META = "pack.json"


PACK_TOKENIZER = "tokenizer.json"


PACK_VALID = "valid.safetensors"


PACK_START = "start"


TRAIN_PART = "train-{index:04d}.npz"
"""One part of the packed training samples: ``ids`` (uint16, samples back to back), ``offsets`` (int64, n + 1),
``span_start`` (int32: first position of the infilled part, the length when it was cut off), ``key``."""


MIB = 1024 * 1024


BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "assets" / "default_model"


@dataclass
class Pack:
    """A pack loaded in memory: training samples back to back and the validation batches."""

    folder: Path
    meta: dict
    tokenizer: Path
    ids: np.ndarray
    """(tokens,) uint16: every training sample's ids, back to back."""
    offsets: np.ndarray
    """(samples + 1,) int64: sample i is ``ids[offsets[i]:offsets[i + 1]]``."""
    span_start: np.ndarray
    """(samples,) int64: first position of sample i's infilled part (its length when there is none)."""
    predicted: np.ndarray
    """(vocab,) bool: ids that are training targets (control tokens and infill markers are given, not predicted)."""
    valid: list[TrainBatch]

    @property
    def n_samples(self) -> int:
        return len(self.span_start)

    @property
    def n_tokens(self) -> int:
        """Predicted positions of all samples (each sample's length - 1, as the loop counts tokens)."""
        return int(self.offsets[-1] - self.offsets[0]) - self.n_samples

    @property
    def pad_id(self) -> int:
        return int(self.meta["pad_id"])


def valid_tensors(batches: Sequence[TrainBatch]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Validation batches as compact safetensors entries (ids int32, masks uint8) and metadata."""
    tensors: dict[str, torch.Tensor] = {}
    for k, b in enumerate(batches):
        tensors[f"{k:03d}.input_ids"] = b.input_ids.to(torch.int32)
        tensors[f"{k:03d}.targets"] = b.targets.to(torch.int32)
        tensors[f"{k:03d}.loss_mask"] = b.loss_mask.to(torch.uint8)
        tensors[f"{k:03d}.span_mask"] = b.span_mask.to(torch.uint8)
    return tensors, {"batches": str(len(batches)), "n_tokens": json.dumps([int(b.n_tokens) for b in batches])}


def read_valid(path: str | Path) -> list[TrainBatch]:
    """The validation batches of a pack, exactly as ``train.loop`` builds them (long ids, float masks)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            n_tokens = json.loads(meta["n_tokens"])
            out = []
            for k in range(int(meta["batches"])):
                out.append(TrainBatch(f.get_tensor(f"{k:03d}.input_ids").long(), f.get_tensor(f"{k:03d}.targets").long(),
                                      f.get_tensor(f"{k:03d}.loss_mask").float(),
                                      f.get_tensor(f"{k:03d}.span_mask").float(), int(n_tokens[k])))
    except Exception as exc:  # safetensors and json raise several types on damaged files
        raise DataError(f"cannot read the pack's validation batches ({exc})", argument="pack", value=str(path),
                        fix="write the pack again with `midirwkv pack-device`") from exc
    return out


def load_pack(folder: str | Path) -> Pack:
    """Read a folder written by ``midirwkv pack-device`` (numpy and safetensors only)."""
    folder = Path(folder)
    path = folder / PACK_META
    if not path.is_file():
        raise DataError("not a pack (pack.json missing)", argument="pack", value=str(folder),
                        fix="write it with `midirwkv pack-device --data CACHE_DIR -o device`")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != PACK_FORMAT:
        raise DataError("the pack was written by another format version", argument="pack", value=meta.get("format"),
                        fix="write it again with this version's `midirwkv pack-device`")
    ids, offsets, spans = [], [0], []
    for part in meta["train"]["parts"]:
        try:
            with np.load(folder / part["name"]) as z:
                if str(z["key"]) != meta["train"]["key"]:
                    raise DataError("a training part belongs to another pack", argument="pack",
                                    value=part["name"], fix="write the pack again into an empty folder")
                part_ids, part_off, part_span = z["ids"], z["offsets"].astype(np.int64), z["span_start"]
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"cannot read training part {part['name']} ({exc})", argument="pack", value=str(folder),
                            fix="copy the whole pack folder, or write it again") from exc
        ids.append(part_ids)
        offsets.extend((part_off[1:] + offsets[-1]).tolist())
        spans.append(part_span.astype(np.int64))
    tokenizer = folder / PACK_TOKENIZER
    if not tokenizer.is_file():
        raise DataError("the pack lacks its tokenizer.json", argument="pack", value=str(folder),
                        fix="write the pack again")
    predicted = np.ones(int(meta["vocab_size"]), dtype=bool)
    predicted[np.asarray(meta["given_ids"], dtype=np.int64)] = False
    pack = Pack(folder=folder, meta=meta, tokenizer=tokenizer,
                ids=np.concatenate(ids) if ids else np.zeros(0, np.uint16), offsets=np.asarray(offsets, np.int64),
                span_start=np.concatenate(spans) if spans else np.zeros(0, np.int64), predicted=predicted,
                valid=read_valid(folder / PACK_VALID))
    if pack.n_samples == 0:
        raise DataError("the pack holds no training samples", argument="pack", value=str(folder),
                        fix="write it again with a larger --max-mib")
    return pack


def make_batch(pack: Pack, indices: Sequence[int], width: int = 0) -> TrainBatch:
    """Packed samples ``indices`` as the loop's padded batch (what ``SpanCollator`` makes of the same samples);
    ``width`` pads it to at least that many positions (a memory probe at the longest length)."""
    lens = pack.offsets[np.asarray(indices) + 1] - pack.offsets[np.asarray(indices)]
    W = max(int(lens.max()) - 1, width)
    B = len(indices)
    inputs = np.full((B, W), pack.pad_id, dtype=np.int64)
    targets = np.full((B, W), pack.pad_id, dtype=np.int64)
    loss_mask = np.zeros((B, W), dtype=np.float32)
    span_mask = np.zeros((B, W), dtype=np.float32)
    n_tokens = 0
    for row, i in enumerate(indices):
        s = pack.ids[pack.offsets[i]:pack.offsets[i + 1]].astype(np.int64)
        n = len(s) - 1
        inputs[row, :n], targets[row, :n] = s[:-1], s[1:]
        loss_mask[row, :n] = pack.predicted[s[1:]]
        span_mask[row, :n] = np.arange(1, n + 1) >= pack.span_start[i]
        n_tokens += n
    return TrainBatch(torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(loss_mask),
                      torch.from_numpy(span_mask), n_tokens)


class PackStream:
    """Batches of ``micro_batch`` packed samples: the stored order first (the CPU run's), then a permutation
    seeded by ``(seed, pass)`` for every further pass."""

    def __init__(self, pack: Pack, micro_batch: int, seed: int) -> None:
        self.pack, self.micro_batch, self.seed = pack, int(micro_batch), int(seed)
        self.passes, self.pos = 0, 0
        self.order = np.arange(pack.n_samples)

    def next(self, width: int = 0) -> TrainBatch:
        idx = []
        while len(idx) < self.micro_batch:
            if self.pos == len(self.order):
                self.passes += 1
                self.pos = 0
                self.order = np.random.default_rng([self.seed, self.passes]).permutation(self.pack.n_samples)
            take = min(self.micro_batch - len(idx), len(self.order) - self.pos)
            idx.extend(int(i) for i in self.order[self.pos:self.pos + take])
            self.pos += take
        return make_batch(self.pack, idx, width)
