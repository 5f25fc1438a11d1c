"""The WKV recurrence run sequentially in C (:mod:`.build`'s library).

* :func:`wkv`: over a prompt, without gradients (prefill).
* :func:`wkv_train`: the same with gradients (an autograd function; the backward recomputes the states
  between checkpoints kept every ``TRAIN_SEGMENT`` steps).

Both keep :func:`midirwkv.model.wkv.wkv_ref`'s contract, and both return None where the library is unavailable
or the inputs do not fit it; :func:`midirwkv.model.wkv.wkv` then falls back to torch.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from midirwkv.model.native.build import MAX_HEAD_SIZE, _Wkv, _WkvTrain, library

TRAIN_SEGMENT = 32
"""Steps between the states the training forward keeps; the backward recomputes the others (memory ~1/32)."""


def _wkv_forward(lib: ctypes.CDLL, inputs: tuple[Tensor, ...], state0: Tensor | None, ckpt: Tensor | None,
                 threads: int | None = None) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Run the C forward: -> (y float32, final state float32, the float32 contiguous inputs it read)."""
    B, T, H, N = inputs[0].shape
    ins = [t.detach().to(torch.float32).contiguous() for t in inputs]
    S = (torch.zeros(B, H, N, N) if state0 is None
         else state0.detach().to(torch.float32, copy=True).contiguous())
    y = torch.empty(B, T, H, N, dtype=torch.float32)
    p = _WkvTrain(K=TRAIN_SEGMENT, ckpt=None if ckpt is None else ckpt.data_ptr(), backward=0)
    p.f = _Wkv(B=B, T=T, H=H, N=N, S=S.data_ptr(), y=y.data_ptr(),
               n_threads=max(1, threads or torch.get_num_threads()))
    p.f.r, p.f.w, p.f.k, p.f.v, p.f.a, p.f.b = (t.data_ptr() for t in ins)
    rc = lib.rwkv7_wkv(ctypes.byref(p))
    if rc != 0:
        raise MemoryError(f"native WKV forward failed (code {rc})")
    return y, S, ins


def wkv(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state0: Tensor | None = None,
        threads: int | None = None) -> tuple[Tensor, Tensor] | None:
    """:func:`midirwkv.model.wkv.wkv_ref`'s recurrence run sequentially in C (inference: no gradients).

    Same contract: ``(B, T, H, N)`` inputs, ``(B, H, N, N)`` state (not modified) -> ``(y, state_T)``.
    Returns None where the native library is unavailable or the inputs do not fit it (CUDA, head > 256,
    no steps).
    """
    B, T, _, N = r.shape
    if r.device.type != "cpu" or N > MAX_HEAD_SIZE or B < 1 or T < 1:
        return None
    lib = library()
    if lib is None:
        return None
    y, S, _ = _wkv_forward(lib, (r, w, k, v, a, b), state0, None, threads)
    return y.to(r.dtype), S


class _WkvFunction(torch.autograd.Function):
    """The WKV recurrence with gradients, both directions sequential in C (see ``rwkv7_wkv``)."""

    @staticmethod
    def forward(ctx, r, w, k, v, a, b, s0):
        B, T, H, N = r.shape
        ckpt = torch.empty(B, H, -(-T // TRAIN_SEGMENT), N, N, dtype=torch.float32)
        y, S, ins = _wkv_forward(library(), (r, w, k, v, a, b), s0, ckpt)
        ctx.save_for_backward(*ins, ckpt)
        ctx.dtypes = (r.dtype, s0.dtype)
        return y.to(r.dtype), S

    @staticmethod
    def backward(ctx, dy, dST):
        *ins, ckpt = ctx.saved_tensors
        r = ins[0]
        B, T, H, N = r.shape
        dy = (torch.zeros_like(r) if dy is None else dy.to(torch.float32)).contiguous()
        dST = None if dST is None else dST.to(torch.float32).contiguous()
        grads = [torch.empty_like(r) for _ in range(6)]
        dS0 = torch.empty(B, H, N, N, dtype=torch.float32)
        p = _WkvTrain(K=TRAIN_SEGMENT, ckpt=ckpt.data_ptr(), dy=dy.data_ptr(),
                      dST=None if dST is None else dST.data_ptr(), dS0=dS0.data_ptr(), backward=1)
        p.f = _Wkv(B=B, T=T, H=H, N=N, n_threads=torch.get_num_threads())
        p.f.r, p.f.w, p.f.k, p.f.v, p.f.a, p.f.b = (t.data_ptr() for t in ins)
        p.dr, p.dw, p.dk, p.dv, p.da, p.db = (g.data_ptr() for g in grads)
        rc = library().rwkv7_wkv(ctypes.byref(p))
        if rc != 0:
            raise MemoryError(f"native WKV backward failed (code {rc})")
        xdt, sdt = ctx.dtypes
        return (*(g.to(xdt) for g in grads), dS0.to(sdt))


def wkv_train(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state0: Tensor | None = None
              ) -> tuple[Tensor, Tensor] | None:
    """:func:`midirwkv.model.wkv.wkv_ref` with gradients to every input and the start state, in C.

    Returns None where the native library is unavailable or the inputs do not fit it (CUDA, head > 256).
    """
    B, T, H, N = r.shape
    if r.device.type != "cpu" or N > MAX_HEAD_SIZE or B < 1 or T < 1 or library() is None:
        return None
    s0 = torch.zeros(B, H, N, N, dtype=torch.float32) if state0 is None else state0
    return _WkvFunction.apply(r, w, k, v, a, b, s0)
