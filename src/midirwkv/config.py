"""Typed configuration. Every knob lives here, one docstring line per field, checks in ``__post_init__``.

Sections are owned by the layer that uses them: model, tokenizer, training, state tuning, sampling.
"""

from __future__ import annotations

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
    def from_dict(cls, data: dict) -> "ModelConfig":
        return _from_dict(cls, data)
