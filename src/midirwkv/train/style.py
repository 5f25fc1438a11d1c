"""Style adaptation from a few songs: state tuning (the paper's method) and LoRA (its baseline).

``tune_state(data, out)`` learns only the initial WKV state of each layer (``(L, H, N, N)`` numbers, every
weight frozen) on songs of one style and writes ``style.safetensors`` (see ``midirwkv.infer.style``), which
``infill(style=...)`` / ``--style`` start from. ``tune_lora(data, out)`` learns only LoRA matrices and writes
an adapter file (loadable with ``model.lora.load_adapter``, mergeable with ``merge_lora``; optionally also a
merged checkpoint folder).

Both read a folder of MIDI songs (or a list of files, or a token cache written by ``prepare_corpus``), hold
some songs out for validation, and train on the paper's samples (``music.examples.build_sample``: bar and
track infilling, augmentation) with the pre-training loss (``train.loop.masked_losses``). After every epoch
the loss on fixed, unaugmented samples of the held-out songs decides early stopping; the best epoch's
tensors are kept. Settings: :class:`midirwkv.config.StyleConfig`.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from midirwkv.config import StyleConfig
from midirwkv.errors import BadMidiError, BadRequestError, DataError

MIDI_SUFFIXES = (".mid", ".midi")
VALID_SEED_OFFSET = 1_000_003
"""Validation samples use seeds apart from every training epoch's."""


# ----------------------------------------------------------------------------------------------- results

@dataclass
class Song:
    """One song of the style: its name and tokens."""

    name: str
    tokens: Any          # music.remi.ScoreTokens


@dataclass
class StyleResult:
    """What :func:`tune_state` / :func:`tune_lora` did."""

    method: str
    out_path: Path
    """The style file (state) or adapter file (LoRA) written."""
    n_params: int
    """Numbers learned."""
    train_songs: list[str]
    valid_songs: list[str]
    skipped: dict[str, str]
    """Songs not used, with the reason (unreadable, too short)."""
    epochs_run: int
    best_epoch: int
    """Epoch whose tensors were kept (0: the starting point was never beaten on validation)."""
    stopped_early: bool
    train_loss: list[float]
    """Mean training loss (nats per predicted token) of each epoch."""
    val_loss: list[float]
    """Validation loss before training (index 0) and after each epoch; empty without held-out songs."""
    val_span_loss: list[float]
    """Validation loss on the infilled part alone, same indexing."""
    tokens: int
    """Training tokens processed (padding excluded)."""
    train_seconds: float
    """Wall time of the training epochs and validations."""
    elapsed_s: float
    """Wall time of the whole call (loading songs and model included)."""
    merged_dir: Path | None = None
    model: Any = field(default=None, repr=False)
    """The tuned model (state tuning on, or LoRA layers unmerged), eval mode."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds > 0 else 0.0

    def summary(self) -> dict:
        """JSON-friendly numbers of the run."""
        return {"method": self.method, "out": str(self.out_path), "n_params": self.n_params,
                "train_songs": len(self.train_songs), "valid_songs": len(self.valid_songs),
                "skipped": len(self.skipped), "epochs_run": self.epochs_run, "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early, "train_loss": self.train_loss, "val_loss": self.val_loss,
                "val_span_loss": self.val_span_loss, "tokens": self.tokens,
                "tokens_per_s": round(self.tokens_per_s, 1), "train_seconds": round(self.train_seconds, 2),
                "elapsed_s": round(self.elapsed_s, 2),
                "merged_dir": str(self.merged_dir) if self.merged_dir else None}


# ----------------------------------------------------------------------------------------------- songs

def _midi_files(data: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(data, (str, Path)):
        root = Path(data)
        if not root.exists():
            raise DataError("song folder not found", argument="data", value=str(root),
                            fix="pass a folder of .mid files (searched recursively)")
        if root.is_file():
            return [root]
        try:
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())
        except OSError as exc:
            raise DataError(f"cannot read the song folder ({exc})", argument="data", value=str(root),
                            fix="check the folder's permissions") from exc
        if not files:
            raise DataError("no MIDI files (.mid, .midi) in the song folder", argument="data", value=str(root),
                            fix="pass a folder holding the songs of the style")
        return files
    files = [Path(p) for p in data]
    if not files:
        raise DataError("no songs given", argument="data", value=[], fix="pass a folder or a list of .mid files")
    return files


def _trial_sample(st, vocab, cfg: StyleConfig) -> None:
    from midirwkv.music.examples import build_sample

    build_sample(st, vocab, np.random.default_rng(0), ctx_len=cfg.ctx_len, p_track=cfg.p_track, augment_data=False)


def load_songs(data: str | Path | Sequence[str | Path] | Sequence[Song], vocab, cfg: StyleConfig | None = None
               ) -> tuple[list[Song], dict[str, str], list[Song] | None]:
    """``(songs, skipped, cache_valid)`` from a MIDI folder, a list of MIDI files, a list of already encoded
    :class:`Song` s, or a token cache folder.

    Songs that cannot be read or are too short for one training sample are skipped (``skipped`` says why);
    none left raises ``DataError``. For a token cache the ``train`` split gives the songs and a non-empty
    ``valid`` split the held-out songs (``cache_valid``); otherwise ``cache_valid`` is None.
    """
    from midirwkv.music.remi import encode_score, load_score

    cfg = cfg or StyleConfig()
    if isinstance(data, (str, Path)) and (Path(data) / "manifest.json").is_file():
        return _cache_songs(Path(data), vocab, cfg)
    if isinstance(data, Sequence) and data and all(isinstance(s, Song) for s in data):
        given = list(data)[:cfg.max_songs or None]
        songs = [s for s in given if not _too_short(s.tokens, vocab, cfg)]
        skipped = {s.name: _too_short(s.tokens, vocab, cfg) for s in given if s not in songs}
        _check_any(songs, skipped, len(given), "songs")
        return songs, skipped, None
    files = _midi_files(data)
    if cfg.max_songs:
        files = files[:cfg.max_songs]
    songs: list[Song] = []
    skipped: dict[str, str] = {}
    for path in files:
        name = str(path)
        try:
            st = encode_score(load_score(path), vocab, meter_override=cfg.meter_override)
        except (BadMidiError, BadRequestError, OSError) as exc:
            skipped[name] = f"unreadable: {str(exc)[:120]}"
            continue
        reason = _too_short(st, vocab, cfg)
        if reason:
            skipped[name] = reason
            continue
        songs.append(Song(name=name, tokens=st))
    _check_any(songs, skipped, len(files), data)
    return songs, skipped, None


def _too_short(st, vocab, cfg: StyleConfig) -> str:
    if not st.tracks or st.n_bars < cfg.min_bars:
        return f"too short: {st.n_bars} bars < min_bars={cfg.min_bars}"
    try:
        _trial_sample(st, vocab, cfg)
    except (DataError, BadRequestError) as exc:
        return f"too short for one sample: {str(exc)[:120]}"
    return ""


def _check_any(songs: list[Song], skipped: dict[str, str], n_files: int, data: object) -> None:
    if songs:
        return
    unreadable = sum(1 for r in skipped.values() if r.startswith("unreadable"))
    examples = dict(list(skipped.items())[:3])
    if unreadable == n_files:
        raise DataError(f"none of the {n_files} MIDI files could be read", argument="data", value=examples,
                        fix="pass valid Standard MIDI Files")
    raise DataError(f"songs too short for one sample ({n_files - unreadable} readable, all too short)",
                    argument="data", value=examples,
                    fix="use songs with at least min_bars bars and notes past the first bar, or lower --min-bars")


def _cache_songs(root: Path, vocab, cfg: StyleConfig) -> tuple[list[Song], dict[str, str], list[Song] | None]:
    from midirwkv.data.dataset import TokenCache

    def read(split: str, limit: int) -> tuple[list[Song], dict[str, str], int]:
        cache = TokenCache(root, split)
        n = len(cache) if not limit else min(limit, len(cache))
        out, skipped = [], {}
        for i in range(n):
            meta = cache.file_meta(i)
            name = f"{meta.get('source', '')}:{meta.get('name', i)}"
            st = cache[i]
            reason = _too_short(st, vocab, cfg)
            if reason:
                skipped[name] = reason
            else:
                out.append(Song(name=name, tokens=st))
        return out, skipped, n

    songs, skipped, n = read("train", cfg.max_songs)
    _check_any(songs, skipped, n, str(root))
    valid: list[Song] | None = None
    if (root / "valid" / "arrays.json").is_file() and cfg.val_fraction > 0:
        v, v_skipped, _ = read("valid", 0)
        skipped.update(v_skipped)
        valid = v or None
    return songs, skipped, valid


def split_songs(songs: list[Song], cfg: StyleConfig) -> tuple[list[Song], list[Song]]:
    """Seeded split into (training, held-out) songs: ``round(n x val_fraction)`` held out, at least one when
    there are two or more songs and ``val_fraction > 0``; at least one song always trains."""
    n = len(songs)
    n_val = 0 if cfg.val_fraction == 0 or n < 2 else min(n - 1, max(1, round(n * cfg.val_fraction)))
    order = np.random.default_rng([cfg.seed, 77]).permutation(n)
    valid = sorted((songs[int(i)] for i in order[:n_val]), key=lambda s: s.name)
    train = sorted((songs[int(i)] for i in order[n_val:]), key=lambda s: s.name)
    return train, valid


# ----------------------------------------------------------------------------------------------- model

def _load_model(model: Any, engine: Any) -> tuple[torch.nn.Module, Any, Path]:
    """A private copy of the model (tuning adds parameters), its vocabulary and its tokenizer file."""
    from midirwkv.music.vocab import Vocab

    if engine is not None:
        tok = Path(engine.path) / "tokenizer.json" if getattr(engine, "path", None) else None
        net = copy.deepcopy(engine.model).cpu()
        net.prompt_layout = engine.layout
        return net, engine.vocab, tok
    from midirwkv.infer.api import DEFAULT_MODEL_DIR
    from midirwkv.model.checkpoint import load_checkpoint
    from midirwkv.music.infill import layout_of

    net, tok, meta = load_checkpoint(model if model is not None else DEFAULT_MODEL_DIR)
    net.prompt_layout = layout_of(meta)          # samples are built in the layout the model was trained with
    return net, Vocab.load(tok), tok


def _lr(cfg: StyleConfig, step: int, total: int) -> float:
    peak = cfg.peak_lr
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.lr_final < 0:
        return peak
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr_final + (peak - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------------------------- loop

def _batches(samples: list, micro_batch: int, pad: int) -> list:
    from midirwkv.train.batches import SpanCollator

    collate = SpanCollator(pad)
    return [collate(samples[i:i + micro_batch]) for i in range(0, len(samples), micro_batch)]


def _validation(model, batches: list) -> tuple[float, float]:
    from midirwkv.train.batches import loss_sums, mean_losses

    return mean_losses(loss_sums(model, batches))


def _fit(model, vocab, params: list[torch.nn.Parameter], train: list[Song], valid: list[Song], cfg: StyleConfig,
         callback: Callable[[dict], None] | None) -> dict:
    """Train ``params`` (everything else frozen) on ``train``; keep the best epoch on ``valid``."""
    from tqdm import tqdm

    from midirwkv.music.examples import build_sample
    from midirwkv.train.batches import masked_losses

    layout = getattr(model, "prompt_layout", "file_order")

    def sample(st, rng, augment: bool):
        return build_sample(st, vocab, rng, ctx_len=cfg.ctx_len, p_track=cfg.p_track, augment_data=augment,
                            layout=layout)

    val_samples = [sample(s.tokens, np.random.default_rng([cfg.seed, VALID_SEED_OFFSET, j, k]), False)
                   for j, s in enumerate(valid) for k in range(cfg.val_samples_per_song)]
    val_batches = _batches(val_samples, cfg.micro_batch, vocab.pad)
    positions = len(train) * cfg.samples_per_song
    steps_per_epoch = -(-positions // cfg.micro_batch)
    total_steps = steps_per_epoch * cfg.epochs
    opt = torch.optim.Adam(params, lr=cfg.peak_lr, betas=cfg.betas, eps=cfg.eps)

    history: dict = {"train_loss": [], "val_loss": [], "val_span_loss": [], "tokens": 0, "stopped_early": False,
                     "best_epoch": 0, "epochs_run": 0}
    best = None
    if val_batches:
        v, vs = _validation(model, val_batches)
        history["val_loss"].append(v)
        history["val_span_loss"].append(vs)
        best = v
    best_tensors = [p.detach().clone() for p in params]
    bad_epochs = 0
    step = 0
    start = time.perf_counter()
    bar = tqdm(total=total_steps, unit="step", file=sys.stderr, dynamic_ncols=True, disable=not cfg.progress,
               desc=f"tune-{cfg.method}")
    try:
        for epoch in range(1, cfg.epochs + 1):
            order = np.random.default_rng([cfg.seed, epoch, 2**31 - 1]).permutation(positions)
            loss_sum = mask_sum = 0.0
            for lo in range(0, positions, cfg.micro_batch):
                batch_pos = [int(p) for p in order[lo:lo + cfg.micro_batch]]
                samples = [sample(train[p % len(train)].tokens, np.random.default_rng([cfg.seed, epoch, p]),
                                  cfg.augment) for p in batch_pos]
                b = _batches(samples, cfg.micro_batch, vocab.pad)[0]
                for g in opt.param_groups:
                    g["lr"] = _lr(cfg, step, total_steps)
                loss, _ = masked_losses(model(b.input_ids), b)
                n_mask = float(b.loss_mask.sum())
                (loss / max(n_mask, 1.0)).backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                loss_sum += float(loss.detach())
                mask_sum += n_mask
                history["tokens"] += b.n_tokens
                rate = history["tokens"] / max(time.perf_counter() - start, 1e-9)
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{float(loss.detach()) / max(n_mask, 1.0):.3f}", tok_s=f"{rate:.0f}")
            history["train_loss"].append(loss_sum / max(mask_sum, 1.0))
            history["epochs_run"] = epoch
            info = {"epoch": epoch, "train_loss": history["train_loss"][-1], "tokens": history["tokens"],
                    "elapsed_s": time.perf_counter() - start}
            if val_batches:
                v, vs = _validation(model, val_batches)
                history["val_loss"].append(v)
                history["val_span_loss"].append(vs)
                info.update(val_loss=v, val_span_loss=vs)
                bar.set_postfix(epoch=epoch, val=f"{v:.3f}", tok_s=f"{rate:.0f}")
                if v < best - cfg.min_delta:
                    best, bad_epochs, history["best_epoch"] = v, 0, epoch
                    best_tensors = [p.detach().clone() for p in params]
                else:
                    bad_epochs += 1
            else:
                history["best_epoch"] = epoch
                best_tensors = [p.detach().clone() for p in params]
            if callback is not None:
                callback(info)
            if val_batches and cfg.patience and bad_epochs >= cfg.patience:
                history["stopped_early"] = epoch < cfg.epochs
                break
    finally:
        bar.close()
    with torch.no_grad():
        for p, t in zip(params, best_tensors):
            p.copy_(t)
    history["train_seconds"] = time.perf_counter() - start
    return history


def _prepare(data, model, engine, cfg: StyleConfig | None, method: str):
    cfg = cfg or StyleConfig(method=method)
    if cfg.method != method:
        cfg = StyleConfig.from_dict({**cfg.to_dict(), "method": method})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    net, vocab, tok = _load_model(model, engine)
    songs, skipped, cache_valid = load_songs(data, vocab, cfg)
    if cache_valid is not None:
        train, valid = sorted(songs, key=lambda s: s.name), cache_valid
    else:
        train, valid = split_songs(songs, cfg)
    torch.manual_seed(cfg.seed)
    return cfg, net, vocab, tok, train, valid, skipped


def _meta(cfg: StyleConfig, train: list[Song], valid: list[Song], skipped: dict, history: dict,
          n_params: int, elapsed: float) -> dict:
    return {"songs": {"train": [s.name for s in train], "valid": [s.name for s in valid], "skipped": skipped},
            "settings": {**cfg.to_dict(), "peak_lr": cfg.peak_lr, "lora_alpha_used": cfg.alpha},
            "losses": {k: history[k] for k in ("train_loss", "val_loss", "val_span_loss", "best_epoch",
                                              "epochs_run", "stopped_early")},
            "n_params": n_params, "tokens": history["tokens"], "train_seconds": round(history["train_seconds"], 3),
            "elapsed_s": round(elapsed, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _result(method: str, out: Path, n_params: int, train, valid, skipped, history: dict, elapsed: float,
            net, merged_dir: Path | None = None) -> StyleResult:
    return StyleResult(method=method, out_path=out, n_params=n_params, train_songs=[s.name for s in train],
                       valid_songs=[s.name for s in valid], skipped=skipped, epochs_run=history["epochs_run"],
                       best_epoch=history["best_epoch"], stopped_early=history["stopped_early"],
                       train_loss=history["train_loss"], val_loss=history["val_loss"],
                       val_span_loss=history["val_span_loss"], tokens=history["tokens"],
                       train_seconds=history["train_seconds"], elapsed_s=elapsed, merged_dir=merged_dir,
                       model=net.eval())


# ----------------------------------------------------------------------------------------------- entry points

def tune_state(data: str | Path | Sequence[str | Path], out: str | Path = "style.safetensors", *,
               model: str | Path | None = None, cfg: StyleConfig | None = None, engine: Any = None,
               callback: Callable[[dict], None] | None = None) -> StyleResult:
    """Learn a style's initial state from songs; write the style file ``out``.

    Args:
        data: a folder of MIDI songs (recursive), a list of MIDI files, or a token cache folder.
        out: the ``.safetensors`` style file to write (atomically).
        model: checkpoint folder (None: the shipped default model); or pass a loaded ``engine``
            (``infer.api.Engine``), which is copied, never modified.
        cfg: settings (``StyleConfig``; ``method`` is forced to ``"state"``).
        callback: called after each epoch with ``{"epoch", "train_loss", "val_loss", ...}``.

    Only the ``L x H x N x N`` state numbers change; every weight stays frozen.
    """
    from midirwkv.infer.style import save_style

    t0 = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() != ".safetensors":
        raise BadRequestError("the style file must end in .safetensors", argument="out", value=str(out),
                              fix="e.g. --out style.safetensors")
    cfg, net, vocab, _, train, valid, skipped = _prepare(data, model, engine, cfg, "state")
    params = net.enable_state_tuning(freeze=True)
    n_params = sum(p.numel() for p in params)
    history = _fit(net, vocab, params, train, valid, cfg, callback)
    elapsed = time.perf_counter() - t0
    save_style(out, net.tuned_state().detach(), net, vocab,
               _meta(cfg, train, valid, skipped, history, n_params, elapsed))
    return _result("state", out, n_params, train, valid, skipped, history, elapsed, net)


def tune_lora(data: str | Path | Sequence[str | Path], out: str | Path = "style_lora.safetensors", *,
              model: str | Path | None = None, cfg: StyleConfig | None = None, engine: Any = None,
              merged_out: str | Path | None = None,
              callback: Callable[[dict], None] | None = None) -> StyleResult:
    """Learn LoRA matrices (rank/alpha from ``cfg``) on songs; write the adapter file ``out``.

    The adapter loads with ``model.lora.load_adapter`` and merges with ``merge_lora``; ``--style`` accepts it
    alone. ``merged_out`` also writes a checkpoint folder with the adapter merged into plain weights.
    Only the LoRA matrices change; every base weight stays frozen.
    """
    from midirwkv.infer.style import ADAPTER_KIND, _atomic_save, _json_meta, identity
    from midirwkv.model.checkpoint import save_checkpoint
    from midirwkv.model.lora import adapter_state_dict, apply_lora, lora_modules, merge_lora

    t0 = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() != ".safetensors":
        raise BadRequestError("the adapter file must end in .safetensors", argument="out", value=str(out),
                              fix="e.g. --out style_lora4.safetensors")
    cfg, net, vocab, tok, train, valid, skipped = _prepare(data, model, engine, cfg, "lora")
    ident = identity(net, vocab)                  # of the base weights, before LoRA layers exist
    apply_lora(net, cfg.lora_rank, cfg.alpha, cfg.lora_targets, freeze=True)
    for name, p in net.named_parameters():
        p.requires_grad_(name.endswith((".lora_A", ".lora_B")))
    params = [p for p in net.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    history = _fit(net, vocab, params, train, valid, cfg, callback)
    elapsed = time.perf_counter() - t0
    meta = _meta(cfg, train, valid, skipped, history, n_params, elapsed)
    targets = sorted({n.split(".", 2)[2] for n in lora_modules(net)})
    file_meta = {**_json_meta(meta), **ident, "kind": ADAPTER_KIND, "lora_rank": str(cfg.lora_rank),
                 "lora_alpha": str(float(cfg.alpha)), "lora_targets": json.dumps(targets)}
    tensors = {k: v for k, v in adapter_state_dict(net).items() if k.endswith((".lora_A", ".lora_B"))}
    _atomic_save(tensors, out, file_meta)
    merged_dir = None
    if merged_out is not None:
        if tok is None:
            raise BadRequestError("merged_out needs the model's tokenizer file", argument="merged_out",
                                  value=str(merged_out), fix="pass model=DIR instead of an in-memory engine")
        merged = merge_lora(copy.deepcopy(net))
        merged_dir = save_checkpoint(merged_out, merged, tok, {"kind": "style-lora-merged", **meta})
    return _result("lora", out, n_params, train, valid, skipped, history, elapsed, net, merged_dir)
