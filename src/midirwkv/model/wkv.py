"""The RWKV-7 ("x070") WKV recurrence: a readable reference loop, a chunked parallel form and a single step.

One contract for every path, per head, with the state ``S`` stored ``[value, key]`` (rows = value channels,
columns = key channels, like RWKV-LM, rwkv.cpp and the ``rwkv`` package)::

    S_t = S_{t-1} diag(exp(w_t)) + (S_{t-1} a_t) b_t^T + v_t k_t^T
    y_t = S_t r_t

``w`` is the LOG decay (``w <= 0``; the model passes ``-exp(-0.5) * sigmoid(...)``), ``a`` and ``b`` the
two vectors of the rank-1 state transition (the model passes ``a = -kk`` and ``b = kk * iclr``). All inputs
are ``(B, T, H, N)``; the state is ``(B, H, N, N)`` and is always kept in float32.

``wkv_ref`` is the spec. ``wkv_chunked`` computes the same thing in chunks of ``chunk`` steps: inside a chunk
the unknown ``u_t = S_{t-1} a_t`` solves a unit lower-triangular system (the WY form of a product of
diagonal-plus-rank-1 matrices), so everything but a short scan over chunks is batched matrix products.
``wkv_step`` is one token of decode. ``wkv`` picks flash-linear-attention's fused kernel on a CUDA device
when it is installed; on the CPU the same recurrence run sequentially in C (``native``: forward for
prefill, forward and backward with checkpointed states for training), else the chunked form.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from midirwkv.errors import BadRequestError
from midirwkv.model import native

DEFAULT_CHUNK = 32
"""Chunk length of ``wkv_chunked``. The model's decay keeps exp(|cumulative log decay| / 2) below ~2e4 at 32."""



def _check(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state0: Tensor | None) -> None:
    if r.dim() != 4:
        raise BadRequestError("wkv inputs must be (B, T, H, N)", argument="r", value=tuple(r.shape),
                              fix="reshape the projections to (batch, time, heads, head_size)")
    for name, x in (("w", w), ("k", k), ("v", v), ("a", a), ("b", b)):
        if x.shape != r.shape:
            raise BadRequestError(f"wkv input {name} has another shape than r", argument=name,
                                  value=tuple(x.shape), fix=f"pass {tuple(r.shape)} like r")
    if state0 is not None:
        B, _, H, N = r.shape
        if tuple(state0.shape) != (B, H, N, N):
            raise BadRequestError("wkv state must be (B, H, N, N)", argument="state0", value=tuple(state0.shape),
                                  fix=f"pass a ({B}, {H}, {N}, {N}) float32 tensor or None for zeros")


@contextlib.contextmanager
def _float32(r: Tensor) -> Iterator[None]:
    """Autocast off inside the recurrence: under bf16 autocast (training on CUDA) its matrix products would
    otherwise run in bf16, whose 8-bit mantissa cannot carry the chunked form's decay factors (up to ~2e4)."""
    if torch.is_autocast_enabled(r.device.type):
        with torch.autocast(device_type=r.device.type, enabled=False):
            yield
    else:
        yield


def _zero_state(r: Tensor) -> Tensor:
    B, _, H, N = r.shape
    return torch.zeros(B, H, N, N, dtype=torch.float32, device=r.device)


def wkv_step(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
             state: Tensor) -> tuple[Tensor, Tensor]:
    """One step of the recurrence on ``(B, H, N)`` inputs and a ``(B, H, N, N)`` state -> ``(y (B,H,N), state)``.

    The input state is not modified.
    """
    S = state * torch.exp(w.float()).unsqueeze(-2)                      # (B, H, Nv, Nk) decay the key columns
    sa = torch.matmul(state, a.float().unsqueeze(-1))                   # (B, H, Nv, 1)  S_{t-1} a_t
    S = S + sa * b.float().unsqueeze(-2) + v.float().unsqueeze(-1) * k.float().unsqueeze(-2)
    y = torch.matmul(S, r.float().unsqueeze(-1)).squeeze(-1)            # (B, H, Nv)
    return y.to(r.dtype), S


def wkv_ref(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
            state0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The specification: a plain loop over time. Returns ``(y (B,T,H,N), state_T (B,H,N,N))``."""
    _check(r, w, k, v, a, b, state0)
    with _float32(r):
        return _wkv_ref(r, w, k, v, a, b, state0)


def _wkv_ref(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
             state0: Tensor | None) -> tuple[Tensor, Tensor]:
    S = _zero_state(r) if state0 is None else state0.float()
    ys = []
    for t in range(r.shape[1]):
        y, S = wkv_step(r[:, t], w[:, t], k[:, t], v[:, t], a[:, t], b[:, t], S)
        ys.append(y)
    if not ys:
        return r.new_zeros(r.shape), S
    return torch.stack(ys, dim=1), S


def wkv_chunked(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
                state0: Tensor | None = None, chunk: int = DEFAULT_CHUNK) -> tuple[Tensor, Tensor]:
    """Chunked parallel form of :func:`wkv_ref` (same outputs and gradients up to float32 rounding).

    Inside a chunk, with ``c_t`` the inclusive cumulative log decay and ``u_t = S_{t-1} a_t``::

        u_t = S_0 (a_t e^{c_{t-1}}) + sum_{s<t} [(a_t e^{c_{t-1}-c_s}) . b_s] u_s + [(a_t e^{c_{t-1}-c_s}) . k_s] v_s
        y_t = S_0 (r_t e^{c_t})     + sum_{s<=t} [(r_t e^{c_t-c_s}) . b_s] u_s + [(r_t e^{c_t-c_s}) . k_s] v_s

    The first line is a unit lower-triangular system in ``u``. Exponents are taken relative to the chunk's
    middle so the two factors of every ``e^{c_t - c_s}`` stay within float32 range. It runs in float32 even
    under autocast.
    """
    _check(r, w, k, v, a, b, state0)
    if chunk < 1:
        raise BadRequestError("chunk must be positive", argument="chunk", value=chunk, fix="use e.g. 32")
    with _float32(r):
        return _wkv_chunked(r, w, k, v, a, b, state0, chunk)


def _wkv_chunked(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state0: Tensor | None,
                 chunk: int) -> tuple[Tensor, Tensor]:
    B, T, H, N = r.shape
    S = _zero_state(r) if state0 is None else state0.float()
    if T == 0:
        return r.new_zeros(r.shape), S
    L = min(chunk, T)
    nc = -(-T // L)
    pad = nc * L - T

    def prep(x: Tensor) -> Tensor:
        x = x.float()
        if pad:
            # zero padding = no decay (log 0), no update, no read: the state passes through unchanged
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        return x.view(B, nc, L, H, N).permute(0, 3, 1, 2, 4)              # (B, H, nc, L, N)

    r_, w_, k_, v_, a_, b_ = (prep(x) for x in (r, w, k, v, a, b))
    c = w_.cumsum(dim=-2)                                                 # (B, H, nc, L, N) inclusive
    c_ex = c - w_                                                         # exclusive: decay before step t
    mid = c[..., (L - 1) // 2: (L - 1) // 2 + 1, :]                       # (B, H, nc, 1, N) reference point
    last = c[..., -1:, :]                                                 # (B, H, nc, 1, N) whole chunk

    a_q = a_ * torch.exp(c_ex - mid)                                      # queries of the u system
    r_q = r_ * torch.exp(c - mid)                                         # queries of the output
    inv = torch.exp(mid - c)
    b_kv, k_kv = b_ * inv, k_ * inv                                       # keys, divided by their decay
    strict = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)
    incl = torch.ones(L, L, dtype=torch.bool, device=r.device).tril()
    zero = torch.zeros((), dtype=torch.float32, device=r.device)
    A_ab = torch.where(strict, a_q @ b_kv.transpose(-1, -2), zero)        # (B, H, nc, L, L)
    A_ak = torch.where(strict, a_q @ k_kv.transpose(-1, -2), zero)
    A_rb = torch.where(incl, r_q @ b_kv.transpose(-1, -2), zero)
    A_rk = torch.where(incl, r_q @ k_kv.transpose(-1, -2), zero)

    eye = torch.eye(L, dtype=torch.float32, device=r.device)
    # u = W S_0^T + U0 with W = (I - A_ab)^-1 (a e^{c_ex}), U0 = (I - A_ab)^-1 A_ak v
    rhs = torch.cat([a_ * torch.exp(c_ex), A_ak @ v_], dim=-1)            # (B, H, nc, L, 2N)
    sol = torch.linalg.solve_triangular(eye - A_ab, rhs, upper=False, unitriangular=True)
    W, U0 = sol[..., :N], sol[..., N:]                                    # (B, H, nc, L, Nk), (.., L, Nv)
    Q = r_ * torch.exp(c) + A_rb @ W                                      # (B, H, nc, L, Nk) reads S_0
    Y0 = A_rb @ U0 + A_rk @ v_                                            # (B, H, nc, L, Nv)
    tail = torch.exp(last - c)                                            # decay from after s to chunk end
    b_end, k_end = b_ * tail, k_ * tail
    # chunk transition: S_next = S_0 G + E
    G = torch.diag_embed(torch.exp(last.squeeze(-2))) + W.transpose(-1, -2) @ b_end   # (B, H, nc, Nk, Nk)
    E = U0.transpose(-1, -2) @ b_end + v_.transpose(-1, -2) @ k_end                  # (B, H, nc, Nv, Nk)

    ys = []
    for i in range(nc):
        ys.append(Y0[:, :, i] + Q[:, :, i] @ S.transpose(-1, -2))         # (B, H, L, Nv)
        S = S @ G[:, :, i] + E[:, :, i]
    y = torch.stack(ys, dim=2)                                            # (B, H, nc, L, Nv)
    y = y.permute(0, 2, 3, 1, 4).reshape(B, nc * L, H, N)[:, :T]         # (B, T, H, N)
    return y.to(r.dtype), S


def _fla_available() -> bool:
    try:
        import fla.ops.generalized_delta_rule  # noqa: F401
    except ImportError:
        return False
    return True


def wkv_fla(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
            state0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """flash-linear-attention's fused DPLR kernel (CUDA only; optional dependency ``fla``)."""
    from fla.ops.generalized_delta_rule import chunk_dplr_delta_rule

    _check(r, w, k, v, a, b, state0)
    # fla keeps its state [key, value]; ours is [value, key]
    h0 = None if state0 is None else state0.float().transpose(-1, -2).contiguous()
    y, hT = chunk_dplr_delta_rule(q=r, k=k, v=v, a=a, b=b, gk=w.float(), scale=1.0, initial_state=h0,
                                  output_final_state=True)
    return y.to(r.dtype), hT.float().transpose(-1, -2)


def wkv(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
        state0: Tensor | None = None, chunk: int = DEFAULT_CHUNK) -> tuple[Tensor, Tensor]:
    """The fastest available path: fla on CUDA when installed; on the CPU the recurrence run sequentially in
    C (:mod:`midirwkv.model.native`: without gradients for prefill, with them for training, both exact);
    else :func:`wkv_chunked`."""
    if r.is_cuda and _fla_available():
        return wkv_fla(r, w, k, v, a, b, state0)
    if not r.is_cuda:
        _check(r, w, k, v, a, b, state0)
        inputs = (r, w, k, v, a, b) if state0 is None else (r, w, k, v, a, b, state0)
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            out = native.wkv_train(r, w, k, v, a, b, state0)
        else:
            out = native.wkv(r, w, k, v, a, b, state0)
        if out is not None:
            return out
    return wkv_chunked(r, w, k, v, a, b, state0, chunk)
