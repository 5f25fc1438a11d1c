"""The recurrent state of an RWKV-7 model, as one named structure (never ``state[i*3+k]``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from midirwkv.errors import BadRequestError, CheckpointError

STATE_KEYS = ("att_x", "ffn_x", "wkv")
"""Tensor names of a state in its safetensors dict."""


@dataclass
class State:
    """Per-layer state after some tokens: token-shift vectors and WKV matrices.

    ``wkv`` is ``[head, value, key]`` per layer and batch row, like RWKV-LM, RWKV-PEFT and rwkv.cpp, and is
    always float32. Methods return new states; they never modify ``self``.
    """

    att_x: Tensor  # (L, B, C) last input of each time-mix (token shift)
    ffn_x: Tensor  # (L, B, C) last input of each channel-mix (token shift)
    wkv: Tensor    # (L, B, H, N, N) WKV matrices

    def __post_init__(self) -> None:
        L, B, _C = self.att_x.shape
        if self.ffn_x.shape != self.att_x.shape or self.wkv.dim() != 5 or tuple(self.wkv.shape[:2]) != (L, B):
            raise BadRequestError(
                "inconsistent state shapes", argument="state",
                value={k: tuple(getattr(self, k).shape) for k in STATE_KEYS},
                fix="att_x and ffn_x must be (L, B, C) and wkv (L, B, H, N, N) with the same L and B")

    @property
    def batch(self) -> int:
        """Number of rows B."""
        return self.att_x.shape[1]

    @property
    def n_layer(self) -> int:
        """Number of layers L."""
        return self.att_x.shape[0]

    @classmethod
    def zeros(cls, n_layer: int, batch: int, n_embd: int, n_head: int, head_size: int,
              dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> State:
        """An all-zero state (the start of every sequence without a tuned state)."""
        return cls(
            att_x=torch.zeros(n_layer, batch, n_embd, dtype=dtype, device=device),
            ffn_x=torch.zeros(n_layer, batch, n_embd, dtype=dtype, device=device),
            wkv=torch.zeros(n_layer, batch, n_head, head_size, head_size, dtype=torch.float32, device=device),
        )

    def _map(self, fn) -> State:
        return State(att_x=fn(self.att_x), ffn_x=fn(self.ffn_x), wkv=fn(self.wkv))

    def clone(self) -> State:
        """A deep copy (contiguous tensors that may be written in place)."""
        return self._map(lambda t: t.clone())

    def detach(self) -> State:
        """The same values cut from the autograd graph (truncated backprop between chunks)."""
        return self._map(lambda t: t.detach())

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> State:
        """Move to ``device``; ``dtype`` applies to the token-shift vectors (the WKV stays float32)."""
        return State(att_x=self.att_x.to(device=device, dtype=dtype), ffn_x=self.ffn_x.to(device=device, dtype=dtype),
                     wkv=self.wkv.to(device=device))

    def expand(self, batch: int) -> State:
        """A batch-``batch`` copy of a batch-1 state (every row starts from the same prefix)."""
        if self.batch != 1:
            raise BadRequestError("expand needs a batch-1 state", argument="state.batch", value=self.batch,
                                  fix="take one row first with state.index(i)")
        return self._map(lambda t: t.expand(t.shape[0], batch, *t.shape[2:]).clone())

    def index(self, i: int) -> State:
        """Row ``i`` as a batch-1 state (a copy)."""
        if not -self.batch <= i < self.batch:
            raise BadRequestError("state row out of range", argument="i", value=i,
                                  fix=f"use 0 <= i < {self.batch}")
        i %= self.batch
        return self._map(lambda t: t[:, i: i + 1].clone())

    def select(self, rows: Sequence[int] | Tensor) -> State:
        """The rows ``rows`` (any order, repeats allowed) as a new state."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.att_x.device)
        return self._map(lambda t: t.index_select(1, idx))

    def put(self, i: int, row: State) -> None:
        """Overwrite row ``i`` in place with the batch-1 state ``row`` (restart a variation)."""
        if row.batch != 1:
            raise BadRequestError("put needs a batch-1 row", argument="row.batch", value=row.batch,
                                  fix="pass state.index(j) of another state")
        self.att_x[:, i] = row.att_x[:, 0]
        self.ffn_x[:, i] = row.ffn_x[:, 0]
        self.wkv[:, i] = row.wkv[:, 0]

    @classmethod
    def cat(cls, states: Sequence[State]) -> State:
        """Stack states along the batch dimension."""
        if not states:
            raise BadRequestError("no states to concatenate", argument="states", value=0, fix="pass at least one")
        return cls(att_x=torch.cat([s.att_x for s in states], 1), ffn_x=torch.cat([s.ffn_x for s in states], 1),
                   wkv=torch.cat([s.wkv for s in states], 1))

    def to_tensors(self) -> dict[str, Tensor]:
        """A flat dict for ``safetensors.torch.save_file``."""
        return {k: getattr(self, k).detach().contiguous() for k in STATE_KEYS}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> State:
        """Inverse of :meth:`to_tensors`."""
        missing = [k for k in STATE_KEYS if k not in tensors]
        if missing:
            raise CheckpointError("state file lacks tensors", argument="state", value=missing,
                                  fix=f"a state file holds {list(STATE_KEYS)}; save it with State.to_tensors()")
        return cls(att_x=tensors["att_x"], ffn_x=tensors["ffn_x"], wkv=tensors["wkv"].float())
