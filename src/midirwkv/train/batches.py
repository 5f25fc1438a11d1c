"""Training batches: span-masked samples from the token cache, the collator, the losses, and validation over
fixed batches (:func:`validation_loss`, the number the model card and publishing compare)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from midirwkv.config import TrainConfig
from midirwkv.errors import DataError
from midirwkv.train.distributed import DistInfo


class TrainBatch(NamedTuple):
    """A padded batch with the span mask: all ``(B, T)`` except ``n_tokens`` (predicted positions, no padding)."""

    input_ids: Tensor
    targets: Tensor
    loss_mask: Tensor
    span_mask: Tensor
    n_tokens: int


class SpanCollator:
    """``collate_fn``: the data layer's :func:`collate` plus the infilled-part mask of each target token."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = int(pad_id)

    def __call__(self, samples: Sequence[Any]) -> TrainBatch:
        from midirwkv.data.dataset import collate
        batch = collate(samples, self.pad_id)
        span = torch.zeros_like(batch.loss_mask)
        n_tokens = 0
        for row, s in enumerate(samples):
            target = np.asarray(s.target_mask, dtype=np.float32)
            span[row, :len(target) - 1] = torch.from_numpy(target[1:])
            n_tokens += len(target) - 1
        return TrainBatch(batch.input_ids, batch.targets, batch.loss_mask, span, n_tokens)


def masked_losses(logits: Tensor, batch: TrainBatch) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy over ``loss_mask`` and over ``loss_mask * span_mask`` (float32 scalars)."""
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.float().reshape(-1, V), batch.targets.reshape(-1), reduction="none")
    ce = ce.view(batch.loss_mask.shape)
    weighted = ce * batch.loss_mask
    return weighted.sum(), (weighted * batch.span_mask).sum()


def loss_weight_sum(batch: TrainBatch, span_weight: float) -> float:
    """Total training weight of ``batch``'s predicted tokens: 1 per context token, ``span_weight`` per span token."""
    return float(batch.loss_mask.sum()) + (span_weight - 1.0) * float((batch.loss_mask * batch.span_mask).sum())


def training_loss(loss: Tensor, span: Tensor, span_weight: float) -> Tensor:
    """The summed training objective from :func:`masked_losses`: span tokens weighted ``span_weight``."""
    return loss if span_weight == 1.0 else loss + (span_weight - 1.0) * span


def to_device(batch: TrainBatch, device: torch.device) -> TrainBatch:
    return TrainBatch(batch.input_ids.to(device, non_blocking=True), batch.targets.to(device, non_blocking=True),
                      batch.loss_mask.to(device, non_blocking=True), batch.span_mask.to(device, non_blocking=True),
                      batch.n_tokens)


class TrainStream:
    """Micro-batches of this process, epoch after epoch, with an exact position at every batch boundary.

    The dataset deals blocks of ``micro_batch`` positions to ``world_size x workers`` slots, so every process
    draws whole rounds of ``world_size x workers`` blocks: each epoch's tail shorter than one round is skipped
    (by every process alike, so no process waits on another). The position is (epoch, start of the current
    round, batches of that round already drawn by this process).
    """

    def __init__(self, cache: Any, vocab: Any, cfg: TrainConfig, info: DistInfo, epoch: int, index: int,
                 skip: int) -> None:
        self.cache, self.vocab, self.cfg, self.info = cache, vocab, cfg, info
        self.slots = max(1, cfg.workers)
        self.round = info.world_size * self.slots * cfg.micro_batch
        if len(cache) < self.round:
            raise DataError("the training split is smaller than one round of micro-batches", argument="data_dir",
                            value=f"{len(cache)} files < {self.round} = world_size x max(1, workers) x micro_batch",
                            fix="prepare more files, or lower micro_batch / workers / the number of processes")
        self.epoch, self.start = epoch, index
        self._open()
        for _ in range(skip):
            self.next()

    def _open(self) -> None:
        from torch.utils.data import DataLoader

        from midirwkv.data.dataset import SampleDataset
        cfg = self.cfg
        ds = SampleDataset(self.cache, self.vocab, seed=cfg.seed, epoch=self.epoch, start_index=self.start,
                           rank=self.info.rank, world_size=self.info.world_size, block=cfg.micro_batch,
                           ctx_len=cfg.ctx_len, p_track=cfg.p_track, augment_data=cfg.augment,
                           layout=cfg.prompt_layout)
        self.left = ((len(self.cache) - self.start) // self.round) * self.slots
        self.drawn = 0
        loader = DataLoader(ds, batch_size=cfg.micro_batch, collate_fn=SpanCollator(self.vocab.pad),
                            num_workers=cfg.workers, pin_memory=self.info.device.type == "cuda")
        self._it = iter(loader)

    def next(self) -> TrainBatch:
        if self.left == 0:
            self.epoch, self.start = self.epoch + 1, 0
            self._open()
        batch = next(self._it)
        self.left -= 1
        self.drawn += 1
        return batch

    def position(self) -> dict:
        """Where the next batch comes from: ``{"epoch", "index", "skip", "workers"}``."""
        whole = self.drawn // self.slots
        return {"epoch": self.epoch, "index": self.start + whole * self.round, "skip": self.drawn % self.slots,
                "workers": self.slots}


def loss_sums(model: torch.nn.Module, batches: Sequence[TrainBatch],
              to: Callable[[TrainBatch], TrainBatch] | None = None,
              autocast: Callable[[], Any] = contextlib.nullcontext) -> list[float]:
    """[loss sum, predicted tokens, span loss sum, span tokens] of ``model`` over ``batches`` (no gradients);
    ``to`` moves a batch to the model's device. :func:`mean_losses` turns them into nats per token."""
    sums = [0.0, 0.0, 0.0, 0.0]
    with torch.no_grad():
        for b in batches:
            b = to(b) if to is not None else b
            with autocast():
                logits = model(b.input_ids)
            loss, span = masked_losses(logits, b)
            sums[0] += float(loss)
            sums[1] += float(b.loss_mask.sum())
            sums[2] += float(span)
            sums[3] += float((b.loss_mask * b.span_mask).sum())
    return sums


def mean_losses(sums: Sequence[float]) -> tuple[float, float]:
    """(loss, span loss) in nats per token from :func:`loss_sums` (summed over processes or not)."""
    return sums[0] / max(sums[1], 1.0), sums[2] / max(sums[3], 1.0)


def validation_loss(model: torch.nn.Module, data_dir: str | Path, vocab: Any, cfg: TrainConfig
                    ) -> tuple[float, float]:
    """(loss, span loss) in nats per token of ``model`` on the validation samples ``cfg`` defines
    (``val_split``, ``val_seed``, ``eval_batches``, ``micro_batch``, ``ctx_len``, ``p_track``): the numbers a run
    with ``cfg`` would log, for comparing models trained with other settings on the same samples."""
    from midirwkv.data.dataset import TokenCache

    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)
    batches = validation_batches(TokenCache(data_dir, cfg.val_split), vocab, cfg, info)
    was_training = model.training
    model.eval()
    sums = loss_sums(model, batches)
    model.train(was_training)
    return mean_losses(sums)


def validation_batches(cache: Any, vocab: Any, cfg: TrainConfig, info: DistInfo) -> list[TrainBatch]:
    """The fixed validation set of this process: ``eval_batches x micro_batch`` samples, no augmentation."""
    from midirwkv.data.dataset import SampleDataset
    want = cfg.eval_batches * cfg.micro_batch
    if len(cache) < info.world_size:
        raise DataError("the validation split has fewer files than processes", argument="val_split",
                        value=f"{cfg.val_split}: {len(cache)} files", fix="prepare more files or set eval_every=0")
    samples: list[Any] = []
    epoch = 0
    while len(samples) < want:
        ds = SampleDataset(cache, vocab, seed=cfg.val_seed, epoch=epoch, rank=info.rank, world_size=info.world_size,
                           block=1, ctx_len=cfg.ctx_len, p_track=cfg.p_track, augment_data=False,
                           layout=cfg.prompt_layout)
        for s in ds:
            samples.append(s)
            if len(samples) == want:
                break
        epoch += 1
    collate = SpanCollator(vocab.pad)
    return [collate(samples[i:i + cfg.micro_batch]) for i in range(0, want, cfg.micro_batch)]
