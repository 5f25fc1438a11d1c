"""Typed configuration. Every knob lives here, one docstring line per field, checks in ``__post_init__``.

Sections are owned by the layer that uses them: model, tokenizer, training, state tuning, sampling.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from midirwkv.errors import BadRequestError


def _from_dict(cls, data: dict):
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys with a clear error."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadRequestError(
            f"unknown {cls.__name__} fields {unknown}", argument="config", value=unknown,
            fix=f"use only {sorted(known)}",
        )
    return cls(**data)


def _check_ints(obj, ints: tuple[tuple[str, int], ...]) -> None:
    """Raise the typed error for the first field of ``ints`` (name, lowest value) that is not an int >= lowest."""
    for name, lo in ints:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise BadRequestError(f"{name} must be an integer >= {lo}", argument=name, value=value,
                                  fix=f"pass an int >= {lo}")


def _check_all(obj, what: str, checks: tuple[tuple[str, bool, str], ...]) -> None:
    """Raise ``invalid <what> setting <name>`` for the first failed (name, ok, fix) of ``checks``."""
    for name, ok, fix in checks:
        if not ok:
            raise BadRequestError(f"invalid {what} setting {name}", argument=name, value=getattr(obj, name), fix=fix)


PROMPT_LAYOUTS = ("target_last", "file_order")
"""Track orders of a bar-infilling prompt (``music.infill``): the target track last, right before the span, or
every track in file order (the paper's); the first is the one new runs train with."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape of an RWKV-7 ("x070") model. Defaults are the paper's 35.1 M-parameter model."""

    vocab_size: int = 16000
    """Number of token ids (embedding rows and head outputs)."""
    n_layer: int = 12
    """Number of blocks."""
    n_embd: int = 384
    """Model width C."""
    head_size: int = 64
    """Channels per WKV head N; heads H = n_embd // head_size."""
    dim_ffn: int = 0
    """FFN hidden width; 0 means 4 * n_embd."""
    decay_lora: int = 32
    """Low-rank dim of the decay (w) projection."""
    aaa_lora: int = 32
    """Low-rank dim of the in-context learning rate (a) projection."""
    mv_lora: int = 32
    """Low-rank dim of the value-residual (v) projection."""
    gate_lora: int = 64
    """Low-rank dim of the output gate (g) projection."""
    ln_x_eps: float = 64e-5
    """GroupNorm epsilon on the WKV output (RWKV-LM uses head_size_divisor**2 * 1e-5 = 64e-5)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_embd", "head_size", "decay_lora", "aaa_lora", "mv_lora", "gate_lora"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise BadRequestError(f"{name} must be a positive integer", argument=name, value=value,
                                      fix="pass a positive int")
        if self.n_embd % self.head_size:
            raise BadRequestError("n_embd must be a multiple of head_size", argument="n_embd", value=self.n_embd,
                                  fix=f"use a multiple of head_size={self.head_size}")
        if self.dim_ffn < 0:
            raise BadRequestError("dim_ffn must be >= 0", argument="dim_ffn", value=self.dim_ffn,
                                  fix="use 0 for 4 * n_embd or a positive width")

    @property
    def n_head(self) -> int:
        """Number of WKV heads H."""
        return self.n_embd // self.head_size

    @property
    def ffn_width(self) -> int:
        """Resolved FFN hidden width."""
        return self.dim_ffn or 4 * self.n_embd

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return _from_dict(cls, data)


MAX_CANDIDATES = 32
"""Most fills sampled per variation for ranking (``SampleConfig.candidates``)."""


@dataclass(frozen=True)
class SampleConfig:
    """Sampling settings of the infilling loop.

    These defaults are the only definition: the command line, the server's request schema, ``evaluate`` and the
    web page (through ``GET /api/defaults``) read them from here. They were chosen on validation prompts by
    ``benchmarks/sampling_grid.py`` (``reports/sampling/``, its rule printed there): temperature 0.7, top-k 5,
    no top-p, the paper's repetition penalty 1.2 over 64 tokens, and the pitch prior of the target track's
    context at strength 1 for key and register; ``candidates`` (4 fills per variation, the most likely kept)
    by ``benchmarks/candidates_grid.py`` (``reports/sampling/candidates``). :data:`PAPER_SAMPLING` holds the
    paper's settings (1.0, 1.2, 20, 0.95, 9e-4, no prior, one sample).
    """

    temperature: float = 0.7
    """Divide the logits by this before sampling (> 0)."""
    repetition_penalty: float = 1.2
    """Divide positive / multiply negative logits of recently seen tokens by this (1.0 = off)."""
    repetition_window: int = 64
    """How many of the most recent tokens the repetition penalty looks at."""
    repetition_spare: bool = False
    """Spare the ids that write a position, pitch or duration from the repetition penalty (loops and ostinati
    repeat them on purpose); the penalty then falls on velocities and the like."""
    top_k: int = 5
    """Keep only the k most likely tokens (0 = off)."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability sums to at least p (1.0 = off)."""
    min_prob: float = 9e-4
    """Drop tokens whose probability is below this floor (0 = off); the most likely token always stays."""
    max_notes_per_bar: int = 64
    """Grammar cap: once a bar holds this many notes only the end of the bar may be sampled."""
    max_tokens_per_bar: int = 400
    """Hard limit on sampled tokens in one bar; a bar that reaches it ends the attempt (retry, then error)."""
    retries: int = 2
    """Fresh attempts for a variation that hit the hard token limit before GenerationError is raised."""
    control_retries: int = 0
    """Re-sample each bar whose achieved controls miss the requested ones up to this many times (best kept)."""
    keep_key: float = 1.0
    """Bar infilling: pull pitches toward the pitch classes of the target track's context bars (0 = off)."""
    keep_register: float = 1.0
    """Bar infilling: pull pitches toward the pitch range of the target track's context bars (0 = off)."""
    candidates: int = 4
    """Bar infilling: sample this many fills per variation (one batch) and keep the one the model itself finds
    most likely (:mod:`midirwkv.infer.rank`); 1 = keep the only sample. Streams and live loops sample one."""

    def __post_init__(self) -> None:
        checks = (
            ("temperature", _finite_at_least_zero(self.temperature) and self.temperature > 0,
             "use a finite temperature > 0, e.g. 1.0"),
            ("repetition_penalty", self.repetition_penalty > 0, "use 1.0 for off or a value like 1.2"),
            ("repetition_window", isinstance(self.repetition_window, int) and self.repetition_window >= 0,
             "use a window of 0 or more tokens"),
            ("repetition_spare", isinstance(self.repetition_spare, bool), "use True or False"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "use 0 for off or a positive k"),
            ("top_p", 0 < self.top_p <= 1, "use a value in (0, 1]; 1.0 is off"),
            ("min_prob", 0 <= self.min_prob < 1, "use a value in [0, 1); 0 is off"),
            ("max_notes_per_bar", isinstance(self.max_notes_per_bar, int) and self.max_notes_per_bar >= 1,
             "use a positive number of notes"),
            ("max_tokens_per_bar", isinstance(self.max_tokens_per_bar, int) and self.max_tokens_per_bar >= 4,
             "use at least 4 tokens per bar"),
            ("retries", isinstance(self.retries, int) and self.retries >= 0, "use 0 or more retries"),
            ("control_retries", isinstance(self.control_retries, int) and self.control_retries >= 0,
             "use 0 or more retries"),
            ("keep_key", _finite_at_least_zero(self.keep_key), "use 0 for off or a finite strength, e.g. 1"),
            ("keep_register", _finite_at_least_zero(self.keep_register),
             "use 0 for off or a finite strength, e.g. 1"),
            ("candidates", isinstance(self.candidates, int) and not isinstance(self.candidates, bool)
             and 1 <= self.candidates <= MAX_CANDIDATES, f"use 1 to {MAX_CANDIDATES} samples per variation"),
        )
        _check_all(self, "sampling", checks)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SampleConfig:
        return _from_dict(cls, data)


def _finite_at_least_zero(value: object) -> bool:
    """``value`` is a real number (not a bool or a string), finite and >= 0."""
    real = isinstance(value, (int, float)) and not isinstance(value, bool)
    return real and math.isfinite(value) and value >= 0


PAPER_SAMPLING = {"temperature": 1.0, "repetition_penalty": 1.2, "top_k": 20, "top_p": 0.95, "min_prob": 9e-4,
                  "keep_key": 0.0, "keep_register": 0.0, "candidates": 1}
"""The paper's sampling settings as ``SampleConfig`` fields: ``SampleConfig(**PAPER_SAMPLING)``."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one pre-training run (``midirwkv.train.train``). Defaults follow the paper where it says.

    Weight decay follows RWKV-LM's RWKV-7 trainer: it applies to every parameter named ``*.weight`` with two or
    more dimensions (the block matrices, the embedding and the head); vectors, norms and the low-rank factors
    (``w1``, ``a2`` ...) are not decayed, and ``att.w0`` learns at ``w0_lr_scale`` x the learning rate.
    """

    data_dir: str = ""
    """Folder written by ``data.prepare_corpus`` (token cache with ``manifest.json``)."""
    out_dir: str = ""
    """Run folder: ``train_log.csv``, ``checkpoints/step-NNNNNNN/`` and the exported ``final/`` checkpoint."""
    model: ModelConfig | str | None = None
    """Model shape, or the path of a ``config.json``; None: ModelConfig() sized to the tokenizer (or init_from's)."""
    tokenizer: str = ""
    """Tokenizer JSON the ids refer to; empty: init_from's ``tokenizer.json``, else the shipped tokenizer."""
    init_from: str = ""
    """Checkpoint folder (``save_checkpoint``) whose weights start a NEW run (optimizer and counters start fresh)."""
    resume: bool = True
    """Continue from the newest checkpoint in ``out_dir/checkpoints`` when there is one."""
    ctx_len: int = 1024
    """Tokens per training sequence (samples are windowed to this by whole bars)."""
    micro_batch: int = 12
    """Sequences per forward pass on each process."""
    grad_accum: int = 1
    """Micro-batches accumulated into one optimizer step."""
    lr: float = 1e-4
    """Peak learning rate (the paper's 1e-4)."""
    lr_floor: float = 1e-5
    """Learning rate the cosine decays to at the end of the run."""
    warmup_steps: int = 100
    """Optimizer steps of linear warm-up from 0 to ``lr``."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0 = no limit)."""
    max_tokens: int = 0
    """Stop once this many tokens were seen over all processes (0 = no limit)."""
    max_minutes: float = 0.0
    """Stop after this much training wall time, summed over resumed runs (0 = no limit)."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas."""
    eps: float = 1e-18
    """AdamW epsilon (the paper's 1e-18; fine for fp32 optimizer state, which AdamW keeps here)."""
    weight_decay: float = 0.1
    """Decoupled weight decay of the matrices (see the class docstring)."""
    w0_lr_scale: float = 2.0
    """Learning-rate multiplier of the decay bias ``att.w0`` (RWKV-LM's RWKV-7 trainer uses 2)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    p_track: float = 0.25
    """Probability of a track-infilling sample (else bar infilling)."""
    augment: bool = True
    """Pitch (+-6) and velocity (+-2) augmentation of training samples (never of validation samples)."""
    prompt_layout: str = PROMPT_LAYOUTS[0]
    """Track order of bar-infilling samples (:data:`PROMPT_LAYOUTS`): the target track last, right before the
    span (``"target_last"``), or every track in file order (``"file_order"``, the paper's). Recorded in the
    checkpoint; inference prompts in the same layout."""
    span_weight: float = 1.0
    """Loss weight of the infilled part's tokens (span bars, written track) relative to context tokens (1 = the
    plain mean). Validation losses are never weighted."""
    val_split: str = "valid"
    """Split of the token cache used for validation."""
    eval_every: int = 500
    """Validate every this many steps, and at the end (0 = never)."""
    eval_batches: int = 20
    """Micro-batches per process in one validation (a fixed set, the same at every validation)."""
    ckpt_every: int = 1000
    """Write a resumable checkpoint every this many steps, and at the end (0 = only at the end)."""
    keep_last: int = 3
    """Resumable checkpoints kept in ``out_dir/checkpoints`` (older ones are deleted)."""
    log_every: int = 10
    """Write a training row to the CSV log every this many steps (validation rows are always written)."""
    seed: int = 0
    """Seed of the model initialisation and of the data order and samples."""
    val_seed: int = 0
    """Seed of the fixed validation samples, apart from ``seed`` so that runs with other seeds (a continued
    run, a comparison) are measured on the same samples."""
    arch: str = "rwkv7"
    """``"rwkv7"``, or ``"gpt2"`` for the Transformer baseline of the same shape (``model.gpt2``; evaluation only)."""
    dtype: str = "auto"
    """``"auto"``: bf16 autocast on CUDA, fp32 on CPU; ``"bf16"``, ``"fp32"`` force one (bf16 needs CUDA)."""
    device: str = "auto"
    """``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``; under torchrun each rank uses its local GPU."""
    threads: int = 0
    """CPU threads for torch (``torch.set_num_threads``); 0 leaves torch's default."""
    workers: int = 0
    """DataLoader worker processes building samples (0 = build in the training process)."""
    progress: bool = True
    """Show a tqdm progress bar (tokens/s) on stderr on the main process."""

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ModelConfig.from_dict(self.model))
        ints = (("ctx_len", 16), ("micro_batch", 1), ("grad_accum", 1), ("warmup_steps", 0), ("max_steps", 0),
                ("max_tokens", 0), ("eval_every", 0), ("eval_batches", 0), ("ckpt_every", 0), ("keep_last", 1),
                ("log_every", 1), ("seed", 0), ("val_seed", 0), ("threads", 0), ("workers", 0))
        _check_ints(self, ints)
        checks = (
            ("data_dir", isinstance(self.data_dir, str) and bool(self.data_dir),
             "pass the folder written by prepare_corpus"),
            ("out_dir", isinstance(self.out_dir, str) and bool(self.out_dir), "pass a folder for logs and checkpoints"),
            ("model", self.model is None or isinstance(self.model, (ModelConfig, str)),
             "pass a ModelConfig, the path of a config.json, or None"),
            ("lr", self.lr > 0, "use a positive learning rate, e.g. 1e-4"),
            ("lr_floor", 0 <= self.lr_floor <= self.lr, "use 0 <= lr_floor <= lr, e.g. lr / 10"),
            ("max_minutes", self.max_minutes >= 0, "use 0 for no limit or a positive number of minutes"),
            ("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "use two values in [0, 1)"),
            ("eps", self.eps > 0, "use a positive epsilon, e.g. 1e-18"),
            ("weight_decay", self.weight_decay >= 0, "use 0 for off or e.g. 0.1"),
            ("w0_lr_scale", self.w0_lr_scale > 0, "use a positive multiplier, e.g. 2.0"),
            ("grad_clip", self.grad_clip >= 0, "use 0 for off or e.g. 1.0"),
            ("p_track", 0 <= self.p_track <= 1, "use a probability in [0, 1]"),
            ("prompt_layout", self.prompt_layout in PROMPT_LAYOUTS,
             "use 'target_last' (the default) or 'file_order' (the paper's)"),
            ("span_weight", isinstance(self.span_weight, (int, float)) and 0 < self.span_weight <= 100,
             "use a weight in (0, 100], e.g. 1 (off) or 3"),
            ("val_split", self.val_split in ("train", "valid", "test"), "use 'valid', 'test' or 'train'"),
            ("arch", self.arch in ("rwkv7", "gpt2"), "use 'rwkv7' (the product) or 'gpt2' (the baseline)"),
            ("dtype", self.dtype in ("auto", "bf16", "fp32"), "use 'auto', 'bf16' or 'fp32'"),
            ("device", self.device in ("auto", "cpu", "cuda"), "use 'auto', 'cpu' or 'cuda'"),
        )
        _check_all(self, "training", checks)
        if not (self.max_steps or self.max_tokens or self.max_minutes):
            raise BadRequestError("the run has no end", argument="max_steps", value=self.max_steps,
                                  fix="set max_steps, max_tokens or max_minutes (any combination; the first reached "
                                      "stops the run)")

    def to_dict(self) -> dict:
        data = asdict(self)
        if isinstance(self.model, ModelConfig):
            data["model"] = self.model.to_dict()
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return _from_dict(cls, data)


DEVICE_CANDIDATES = ("4x128", "6x256", "8x256", "8x384", "12x384")
"""Model sizes (``LAYERSxWIDTH``) a device run measures by default, smallest first."""


def parse_size(size: str) -> tuple[int, int]:
    """``"8x384"`` -> ``(8, 384)`` (layers, width); a clear error for anything else."""
    parts = str(size).lower().split("x")
    if len(parts) == 2 and all(p.isdigit() and int(p) > 0 for p in parts):
        return int(parts[0]), int(parts[1])
    raise BadRequestError("a model size is LAYERSxWIDTH", argument="size", value=size, fix="write e.g. 8x384")


@dataclass(frozen=True)
class DeviceConfig:
    """One time-boxed training run on a lent accelerator (``python -m midirwkv.train.device``) from the folder
    ``midirwkv pack-device`` writes. The sample settings (context, layout, augmentation, validation samples) are
    the pack's; the optimizer settings not named here are :class:`TrainConfig`'s defaults, as on the CPU."""

    pack: str = ""
    """Folder written by ``midirwkv pack-device`` (training samples, validation batches, tokenizer)."""
    out_dir: str = ""
    """Folder the checkpoint is returned in: ``final/`` (split fp16 weights, config, tokenizer, meta) and
    ``train_log.csv``."""
    minutes: float = 9.0
    """Wall-clock budget of the whole run from its start: checks, measuring, training and the last checkpoint."""
    device: str = "cuda"
    """``"cuda"`` (refuses to start without a GPU) or ``"cpu"`` (tests and dry runs)."""
    size: str = ""
    """Model size ``LAYERSxWIDTH`` (e.g. ``"8x384"``); empty: measure ``candidates`` and pick one."""
    candidates: tuple[str, ...] = DEVICE_CANDIDATES
    """Sizes measured when ``size`` is empty."""
    tokens_per_param: float = 20.0
    """The pick: the largest candidate that sees at least this many tokens per parameter in the time left."""
    measure_s: float = 20.0
    """Seconds spent measuring tokens per second, over all candidates together."""
    start: str = ""
    """Checkpoint whose weights start a size of its width (grown in depth when deeper); empty: the pack's
    ``start/`` if it has one, else the bundled model; ``"none"``: every size starts from random weights."""
    micro_batch: int = 0
    """Sequences per forward pass, a multiple of the pack's validation micro-batch; 0: 64 on CUDA (halved until
    it fits in memory), the validation micro-batch on the CPU."""
    lr: float = 1e-3
    """Peak learning rate (a GPU batch holds ~16 x the CPU runs' tokens)."""
    lr_floor: float = 1e-4
    """Learning rate the cosine reaches when the training time is up."""
    warmup_steps: int = 30
    """Optimizer steps of linear warm-up."""
    span_weight: float = 1.0
    """Loss weight of the infilled tokens, as ``TrainConfig.span_weight``."""
    ckpt_every_s: float = 60.0
    """Validate and write the checkpoint about every this many seconds of training, and at the end."""
    log_every_s: float = 10.0
    """Print a progress line and a ``train_log.csv`` row about every this many seconds."""
    seed: int = 0
    """Seed of the initialisation and of the order of the packed samples after their first pass."""
    kernel: str = "chunked"
    """WKV path: ``"chunked"`` (``wkv.wkv_chunked``, the path the CPU tests cover) or ``"auto"``
    (``wkv.wkv``: flash-linear-attention's kernel when installed, else the chunked one)."""
    shard_mib: float = 15.0
    """Largest weights file of the returned checkpoint, MiB."""
    max_ckpt_mib: float = 60.0
    """Largest returned checkpoint (all weights files), MiB; larger sizes are not measured."""
    max_files: int = 8
    """Files the returned folder may hold (weights parts, config, tokenizer, meta, log)."""
    threads: int = 0
    """CPU threads for torch (0 leaves torch's default)."""

    def __post_init__(self) -> None:
        if isinstance(self.candidates, (list, str)):
            value = self.candidates.split(",") if isinstance(self.candidates, str) else self.candidates
            object.__setattr__(self, "candidates", tuple(s.strip() for s in value if s.strip()))
        for s in ((self.size,) if self.size else ()) + tuple(self.candidates):
            parse_size(s)
        checks = (
            ("pack", isinstance(self.pack, str) and bool(self.pack), "pass the folder `midirwkv pack-device` wrote"),
            ("out_dir", isinstance(self.out_dir, str) and bool(self.out_dir), "pass a folder for the checkpoint"),
            ("minutes", self.minutes > 0, "use a positive number of minutes, e.g. 9"),
            ("device", self.device in ("cuda", "cpu"), "use 'cuda' or 'cpu'"),
            ("candidates", bool(self.size or self.candidates), "name at least one size, e.g. 6x256"),
            ("tokens_per_param", self.tokens_per_param > 0, "use e.g. 20"),
            ("measure_s", self.measure_s >= 0, "use 0 or more seconds, e.g. 20"),
            ("micro_batch", isinstance(self.micro_batch, int) and self.micro_batch >= 0, "use 0 (auto) or a count"),
            ("lr", self.lr > 0, "use a positive learning rate, e.g. 1e-3"),
            ("lr_floor", 0 <= self.lr_floor <= self.lr, "use 0 <= lr_floor <= lr"),
            ("warmup_steps", isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "use 0 or more steps"),
            ("span_weight", 0 < self.span_weight <= 100, "use a weight in (0, 100], e.g. 1"),
            ("ckpt_every_s", self.ckpt_every_s > 0, "use e.g. 60 seconds"),
            ("log_every_s", self.log_every_s > 0, "use e.g. 10 seconds"),
            ("kernel", self.kernel in ("chunked", "auto"), "use 'chunked' (the tested path) or 'auto'"),
            ("shard_mib", self.shard_mib >= 1, "use at least 1 MiB, e.g. 15"),
            ("max_ckpt_mib", self.max_ckpt_mib >= self.shard_mib, "use at least shard_mib"),
            ("max_files", isinstance(self.max_files, int) and self.max_files >= 5, "use at least 5 files"),
            ("threads", isinstance(self.threads, int) and self.threads >= 0, "use 0 (default) or a count"),
        )
        _check_all(self, "device", checks)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["candidates"] = list(self.candidates)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DeviceConfig:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class StyleConfig:
    """Settings of style adaptation (``midirwkv.train.style``): state tuning or LoRA on a few songs.

    Defaults are the paper's where it says (state lr 5e-2, 16 epochs, LoRA rank = alpha = 4 or 32 on
    receptance/key/value/output and FFN key/value); the rest is sized for a CPU.
    """

    method: str = "state"
    """``"state"`` (learn only the initial WKV state of each layer) or ``"lora"`` (learn only LoRA matrices)."""
    epochs: int = 16
    """Passes over the training songs (the paper's 16)."""
    samples_per_song: int = 1
    """Training samples (random span, tracks, augmentation) drawn from each song per epoch."""
    lr: float = 0.0
    """Peak learning rate; 0 means the method's default: 5e-2 for the state (paper), 1e-3 for LoRA (ours)."""
    lr_final: float = -1.0
    """Learning rate the cosine decays to at the last step; -1 means constant (= ``lr``)."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas (RWKV-PEFT's)."""
    eps: float = 1e-8
    """Adam epsilon (RWKV-PEFT's)."""
    grad_clip: float = 1.0
    """Clip the gradient norm of the trained tensors to this (0 = off)."""
    micro_batch: int = 4
    """Samples per optimizer step."""
    ctx_len: int = 1024
    """Tokens per training sample (windowed by whole bars; the paper used 2048)."""
    p_track: float = 0.25
    """Probability of a track-infilling sample (else bar infilling), as in pre-training."""
    augment: bool = True
    """Pitch (+-6) and velocity (+-2) augmentation of training samples (never of validation samples)."""
    meter: str = ""
    """Read every song in this meter, e.g. ``"4/4"`` (POP909 declares 1/4); empty: the files' own meters."""
    max_songs: int = 0
    """Use at most this many songs (in sorted name order, before the split); 0 = all."""
    val_fraction: float = 0.1
    """Share of the songs held out for validation (at least one song when there are two or more)."""
    val_samples_per_song: int = 2
    """Fixed (seeded, unaugmented) validation samples per held-out song."""
    patience: int = 3
    """Stop after this many epochs without a validation improvement (0 = never stop early)."""
    min_delta: float = 1e-3
    """Smallest drop of the validation loss (nats per token) that counts as an improvement."""
    min_bars: int = 4
    """Songs with fewer bars are too short for a sample and are skipped."""
    lora_rank: int = 4
    """LoRA rank (the paper compares 4 and 32)."""
    lora_alpha: float = 0.0
    """LoRA alpha; 0 means equal to the rank (the paper's rank = alpha)."""
    lora_targets: tuple[str, ...] = ("att.receptance", "att.key", "att.value", "att.output", "ffn.key", "ffn.value")
    """Linear layers of each block that get LoRA."""
    seed: int = 0
    """Seed of the song split, the samples and the LoRA initialisation."""
    threads: int = 0
    """torch CPU threads (0 = leave torch's setting)."""
    progress: bool = True
    """Show a tqdm progress bar (tokens/s) on stderr."""

    def __post_init__(self) -> None:
        for name in ("betas", "lora_targets"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        ints = (("epochs", 1), ("samples_per_song", 1), ("warmup_steps", 0), ("micro_batch", 1), ("ctx_len", 16),
                ("max_songs", 0), ("val_samples_per_song", 1), ("patience", 0), ("min_bars", 1), ("lora_rank", 1),
                ("seed", 0), ("threads", 0))
        _check_ints(self, ints)
        checks = (
            ("method", self.method in ("state", "lora"), "use 'state' or 'lora'"),
            ("lr", self.lr >= 0, "use 0 for the method's default or a positive learning rate"),
            ("lr_final", self.lr_final == -1.0 or self.lr_final >= 0, "use -1 for a constant rate or a value >= 0"),
            ("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "use two values in [0, 1)"),
            ("eps", self.eps > 0, "use a positive epsilon, e.g. 1e-8"),
            ("grad_clip", self.grad_clip >= 0, "use 0 for off or e.g. 1.0"),
            ("p_track", 0 <= self.p_track <= 1, "use a probability in [0, 1]"),
            ("val_fraction", 0 <= self.val_fraction < 1, "use a fraction in [0, 1), e.g. 0.1"),
            ("min_delta", self.min_delta >= 0, "use 0 or a small positive loss difference"),
            ("lora_alpha", self.lora_alpha >= 0, "use 0 for alpha = rank, or a positive alpha"),
            ("lora_targets", bool(self.lora_targets), "name at least one layer, e.g. ('att.key', 'att.value')"),
        )
        _check_all(self, "style-tuning", checks)
        if self.meter:
            num, sep, den = self.meter.partition("/")
            if not (sep and num.strip().isdigit() and den.strip().isdigit() and int(num) > 0 and int(den) > 0
                    and not int(den) & (int(den) - 1)):
                raise BadRequestError("meter must look like N/D with D a power of two", argument="meter",
                                      value=self.meter, fix="use e.g. '4/4' (or '' for the files' own meters)")

    @property
    def peak_lr(self) -> float:
        """The learning rate actually used at the peak (the method's default when ``lr`` is 0)."""
        return self.lr or (5e-2 if self.method == "state" else 1e-3)

    @property
    def alpha(self) -> float:
        """The LoRA alpha actually used (the rank when ``lora_alpha`` is 0)."""
        return self.lora_alpha or float(self.lora_rank)

    @property
    def meter_override(self) -> tuple[int, int] | None:
        """``meter`` as (numerator, denominator), or None."""
        if not self.meter:
            return None
        num, _, den = self.meter.partition("/")
        return int(num), int(den)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["betas"] = list(self.betas)
        data["lora_targets"] = list(self.lora_targets)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> StyleConfig:
        return _from_dict(cls, data)
