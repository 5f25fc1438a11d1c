"""One decode step in C: the equations of :func:`midirwkv.model.decode.decode_step` (the tests hold the two to
1e-4), as one call per token instead of ~40 torch ops per layer: at paper size and batch 1 that is the
difference between paying a dispatch and a thread wake-up per op and streaming the weights at memory speed.

Weights are fp32, or int8 with one scale per output row (``RWKV7.set_decode(int8=True)``) for the big
projections and the head: a quarter of the bytes per token, logits within the tolerance the tests state.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from midirwkv.errors import BadRequestError
from midirwkv.model.native.build import PER_LAYER, _Mat, _Step
from midirwkv.model.ops import DECAY_SCALE, applied_weight
from midirwkv.model.state import State

if TYPE_CHECKING:
    from midirwkv.model.rwkv7 import RWKV7


def pack_panels(w: Tensor) -> Tensor:
    """``(out, in)`` -> panels of 16 outputs, ``(ceil(out/16), in, 16)``, outputs zero-padded (any dtype)."""
    out, n = w.shape
    P = -(-out // 16)
    padded = torch.zeros(P * 16, n, dtype=w.dtype)
    padded[:out] = w
    return padded.view(P, 16, n).transpose(1, 2).contiguous()


def quantize_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per output row: ``w ~= q * s[:, None]`` with ``|q| <= 127``."""
    s = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / s[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), s.float().contiguous()


class NativeDecoder:
    """A model's weights laid out for ``kernels.c`` (matrices in panels of 16 outputs, see
    :func:`pack_panels`; int8 ones with a scale per output), and the call that runs a step."""

    def __init__(self, model: RWKV7, lib: ctypes.CDLL, int8: bool = False):
        cfg = model.cfg
        self.lib, self.int8, self.cfg = lib, int8, cfg
        self._keep: list[Tensor] = []
        self._mats: list[_Mat] = []

        def f(t: Tensor) -> int:
            t = t.detach().to(torch.float32).contiguous()
            self._keep.append(t)
            return t.data_ptr()

        def mat(w: Tensor, quant: bool) -> ctypes.POINTER:
            w = w.detach().to(torch.float32)
            m = _Mat(out=w.shape[0], in_=w.shape[1])
            if quant:
                q, s = quantize_rows(w)
                q = pack_panels(q)
                self._keep += [q, s]
                m.q, m.s = q.data_ptr(), s.data_ptr()
            else:
                m.f = f(pack_panels(w))
            self._mats.append(m)
            return ctypes.pointer(m)

        table: list[object] = []
        for block in model.blocks:
            att, ffn = block.att, block.ffn
            row = [
                f(block.ln1.weight), f(block.ln1.bias), f(block.ln2.weight), f(block.ln2.bias),
                f(torch.cat([att.x_r, att.x_k, att.x_v, att.x_w, att.x_a, att.x_v, att.x_g]).view(7, -1)),
                mat(applied_weight(att.receptance), int8), mat(applied_weight(att.key), int8),
                mat(applied_weight(att.value), int8), mat(applied_weight(att.output), int8),
                mat(att.w1.t(), False), mat(att.a1.t(), False), mat(att.v1.t(), False), mat(att.g1.t(), False),
                mat(att.w2.t(), False), mat(att.a2.t(), False), mat(att.v2.t(), False), mat(att.g2.t(), False),
                f(att.w0.view(-1)), f(att.a0.view(-1)), f(att.v0.view(-1)),
                f(att.k_k.view(-1)), f(att.k_a.view(-1)), f(att.r_k.reshape(-1)),
                f(att.ln_x.weight), f(att.ln_x.bias),
                f(ffn.x_k.view(-1)),
                mat(applied_weight(ffn.key), int8), mat(applied_weight(ffn.value), int8),
            ]
            assert len(row) == PER_LAYER
            table += row
        self._table = (ctypes.c_void_p * len(table))(
            *[t if isinstance(t, int) else ctypes.cast(t, ctypes.c_void_p).value for t in table])
        self._head = mat(applied_weight(model.head), int8)
        b0 = model.blocks[0]
        st = _Step()
        st.n_layer, st.C, st.H, st.N = cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_size
        st.F, st.V = applied_weight(b0.ffn.key).shape[0], cfg.vocab_size
        st.D = max(b0.att.w1.shape[1], b0.att.a1.shape[1], b0.att.v1.shape[1])
        st.Dg = b0.att.g1.shape[1]
        st.ln_eps, st.lnx_eps, st.decay_scale = b0.ln1.eps, cfg.ln_x_eps, DECAY_SCALE
        st.emb = f(model.emb.weight)
        st.ln0_w, st.ln0_b = f(b0.ln0.weight), f(b0.ln0.bias)
        st.lnout_w, st.lnout_b = f(model.ln_out.weight), f(model.ln_out.bias)
        st.head = self._head
        st.layers = ctypes.cast(self._table, ctypes.c_void_p).value
        self._step = st

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights a decode step reads (all but the embedding, which is read one row per token)."""
        return sum(t.numel() * t.element_size() for t in self._keep) - self.cfg.vocab_size * self.cfg.n_embd * 4

    def step(self, idx: Tensor, state: State, inplace: bool = False, threads: int | None = None
             ) -> tuple[Tensor, State]:
        """Logits ``(B, V)`` and the state after one token per row (``decode_step``'s contract)."""
        B = idx.shape[0]
        parts = {k: getattr(state, k) for k in ("att_x", "ffn_x", "wkv")}
        direct = inplace and all(t.dtype == torch.float32 and t.is_contiguous() for t in parts.values())
        work = state if direct else State(**{k: t.to(torch.float32, copy=True).contiguous()
                                              for k, t in parts.items()})
        ids = idx.to(torch.int64).contiguous()
        if B and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.vocab_size):
            raise BadRequestError("token id out of the vocabulary", argument="idx",
                                  value=[int(ids.min()), int(ids.max())],
                                  fix=f"ids must lie in [0, {self.cfg.vocab_size})")
        logits = torch.empty(B, self.cfg.vocab_size, dtype=torch.float32)
        st = _Step.from_buffer_copy(self._step)     # a copy per call: threads may share a decoder
        st.B = B
        st.idx, st.logits = ids.data_ptr(), logits.data_ptr()
        st.att_x, st.ffn_x, st.wkv = work.att_x.data_ptr(), work.ffn_x.data_ptr(), work.wkv.data_ptr()
        st.n_threads = max(1, threads or torch.get_num_threads())
        rc = self.lib.rwkv7_decode_step(ctypes.byref(st))
        if rc == 2:
            raise MemoryError("native decode step: out of memory for its scratch buffers")
        if rc != 0:
            raise RuntimeError(f"native decode step rejected its arguments (code {rc})")
        if inplace and not direct:
            for k, t in parts.items():
                t.copy_(getattr(work, k))
            work = state
        return logits, work
