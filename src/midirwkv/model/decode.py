"""Lean one-token decode for :class:`~midirwkv.model.rwkv7.RWKV7` (inference only, no autograd).

The same equations as ``RWKV7.forward`` with T = 1, on weights laid out once for matrix-vector work:
every projection stored ``(in, out)`` (the fast layout for a row vector times a matrix), the three big
time-mix projections stacked for one batched product, the decay / in-context-rate / value-residual low-rank
factors stacked likewise, LoRA updates merged in. The layout is cached on the model and rebuilt when a
weight changes (optimizer step, ``load_state_dict``) or is replaced (LoRA applied or merged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midirwkv.errors import BadRequestError
from midirwkv.model.native import MAX_HEAD_SIZE, NativeDecoder, library
from midirwkv.model.ops import DECAY_SCALE, applied_weight
from midirwkv.model.state import State

if TYPE_CHECKING:
    from midirwkv.model.rwkv7 import RWKV7


@dataclass
class LayerWeights:
    """One block's weights in decode layout."""

    ln1: tuple[Tensor, Tensor]
    ln2: tuple[Tensor, Tensor]
    maa: Tensor          # (7, 1, C) token-shift weights in the order r, k, v | w, a, v, g
    r_t: Tensor          # (C, C) receptance as (in, out); all matrices: see _gemv_layout
    k_t: Tensor          # (C, C) key
    v_t: Tensor          # (C, C) value
    wav1: Tensor         # (3, C, D) first low-rank factors of decay, iclr, value residual (zero-padded to D)
    wav2: Tensor         # (3, D, C) second factors
    wav0: Tensor         # (3, 1, C) their biases w0, a0, v0
    g1: Tensor           # (C, Dg)
    g2: Tensor           # (Dg, C)
    k_k: Tensor          # (C,)
    k_a: Tensor          # (C,)
    one_minus_k_a: Tensor  # (C,)
    r_k: Tensor          # (H, N)
    ln_x: tuple[Tensor, Tensor]
    o_t: Tensor          # (C, C)
    ffn_x_k: Tensor      # (C,)
    ffn_k_t: Tensor      # (C, F)
    ffn_v_t: Tensor      # (F, C)


def _gemv_layout(module: nn.Module) -> Tensor:
    """A linear layer's weight as an ``(in, out)`` operand for ``x @ W``, stored with its longer side contiguous.

    A row vector times a matrix streams the matrix from memory; MKL does that fastest when the contiguous
    dimension is the long one (measured: 19 vs 11 GB/s for 384 x 1536 either way round).
    """
    w = applied_weight(module)                                            # (out, in)
    return w.t() if w.shape[1] > w.shape[0] else w.t().contiguous()


def _pad_stack(mats: list[Tensor], dim: int) -> Tensor:
    """Stack matrices after zero-padding dimension ``dim`` to the largest (exact: the pads multiply zeros)."""
    size = max(m.shape[dim] for m in mats)
    out = []
    for m in mats:
        pad = [0, 0, 0, 0]
        pad[1 if dim == 1 else 3] = size - m.shape[dim]
        out.append(F.pad(m, pad))
    return torch.stack(out)




class DecodeWeights:
    """All weights of one model in decode layout, plus the versions of the parameters they came from."""

    def __init__(self, model: RWKV7, native: NativeDecoder | None = None):
        cfg = model.cfg
        self.n_embd, self.n_head, self.head_size, self.eps = cfg.n_embd, cfg.n_head, cfg.head_size, cfg.ln_x_eps
        self.params = list(model.parameters())
        self.versions = [p._version for p in self.params]
        self.native = native
        """The native decoder when the step runs in C (:mod:`midirwkv.model.native`); then the torch layout is
        not built."""
        if native is not None:
            return
        with torch.no_grad():
            self.emb = model.emb.weight.detach()
            b0 = model.blocks[0]
            self.ln0 = (b0.ln0.weight.detach(), b0.ln0.bias.detach())
            self.layers = [self._layer(block) for block in model.blocks]
            self.ln_out = (model.ln_out.weight.detach(), model.ln_out.bias.detach())
            self.head_t = _gemv_layout(model.head)

    @classmethod
    def build(cls, model: RWKV7, int8: bool = False) -> DecodeWeights:
        """The native layout where the library builds and the weights are fp32 on the CPU, else torch's."""
        fits = model.cfg.head_size <= MAX_HEAD_SIZE and all(
            p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
        lib = library() if fits else None
        if lib is None:
            if int8:
                raise BadRequestError("int8 decode needs the native decoder", argument="int8", value=True,
                                      fix="keep fp32 weights on the CPU, install a C compiler, and leave "
                                          "MIDIRWKV_DECODE unset")
            return cls(model)
        with torch.no_grad():
            return cls(model, native=NativeDecoder(model, lib, int8=int8))

    def is_current(self) -> bool:
        """True while no parameter was modified in place since the build (tens of microseconds).

        Replacing parameters or modules (LoRA applied or merged, a new ``nn.Parameter`` assigned) is not seen
        here: those paths call ``RWKV7.invalidate_decode_cache()``.
        """
        return [p._version for p in self.params] == self.versions

    @staticmethod
    def _layer(block: nn.Module) -> LayerWeights:
        att, ffn = block.att, block.ffn
        d = lambda t: t.detach()
        return LayerWeights(
            ln1=(d(block.ln1.weight), d(block.ln1.bias)), ln2=(d(block.ln2.weight), d(block.ln2.bias)),
            maa=d(torch.cat([att.x_r, att.x_k, att.x_v, att.x_w, att.x_a, att.x_v, att.x_g], dim=0)),
            r_t=_gemv_layout(att.receptance), k_t=_gemv_layout(att.key), v_t=_gemv_layout(att.value),
            wav1=_pad_stack([d(att.w1), d(att.a1), d(att.v1)], dim=1),
            wav2=_pad_stack([d(att.w2), d(att.a2), d(att.v2)], dim=0),
            wav0=d(torch.cat([att.w0, att.a0, att.v0], dim=0)),
            g1=d(att.g1), g2=d(att.g2),
            k_k=d(att.k_k.view(-1)), k_a=d(att.k_a.view(-1)), one_minus_k_a=d(1 - att.k_a.view(-1)),
            r_k=d(att.r_k), ln_x=(d(att.ln_x.weight), d(att.ln_x.bias)),
            o_t=_gemv_layout(att.output),
            ffn_x_k=d(ffn.x_k.view(-1)),
            ffn_k_t=_gemv_layout(ffn.key), ffn_v_t=_gemv_layout(ffn.value),
        )


def decode_step(dw: DecodeWeights, idx: Tensor, state: State, inplace: bool = False) -> tuple[Tensor, State]:
    """Logits ``(B, V)`` and the state after one token per row.

    With ``inplace`` the new state is written into ``state`` (and returned): no fresh 1 MB allocation per
    token, whose page faults cost ~0.7 ms at paper size. Otherwise ``state`` is left unchanged.
    """
    if dw.native is not None:
        return dw.native.step(idx, state, inplace)
    B = idx.shape[0]
    C, H, N = dw.n_embd, dw.n_head, dw.head_size
    BH = B * H
    new = state if inplace else State(att_x=torch.empty_like(state.att_x), ffn_x=torch.empty_like(state.ffn_x),
                                      wkv=torch.empty_like(state.wkv))
    x = F.layer_norm(dw.emb[idx], (C,), *dw.ln0)                         # (B, C)
    v_first = x
    for i, L in enumerate(dw.layers):
        # ---- time mix
        h = F.layer_norm(x, (C,), *L.ln1)
        mixed = torch.addcmul(h, state.att_x[i] - h, L.maa)               # (7, B, C) r k v | w a v g
        new.att_x[i] = h
        r, k, v = mixed[0] @ L.r_t, mixed[1] @ L.k_t, mixed[2] @ L.v_t    # (B, C) each
        low = torch.bmm(mixed[3:6], L.wav1)                               # (3, B, D)
        low[0].tanh_()
        sig = torch.sigmoid(torch.baddbmm(L.wav0, low, L.wav2))           # (3, B, C) decay, iclr, v-residual
        gate = torch.sigmoid(mixed[6] @ L.g1) @ L.g2                      # (B, C)
        if i == 0:
            v_first = v
        else:
            v = torch.lerp(v, v_first, sig[2])
        iclr = sig[1]
        kk = F.normalize((k * L.k_k).view(B, H, N), dim=-1)               # (B, H, N)
        k = k * torch.addcmul(L.one_minus_k_a, iclr, L.k_a)               # k * (1 + (iclr - 1) * k_a)
        # ---- WKV: S' = S diag(decay) - (S kk)(kk * iclr)^T + v k^T ; y = S' r      (per head, S [value, key])
        # Written straight into the output state: no state-sized temporaries (their page faults cost more
        # than the arithmetic).
        S = state.wkv[i].view(BH, N, N)
        decay = torch.exp(sig[0] * -DECAY_SCALE).view(BH, 1, N)
        left = torch.cat([torch.bmm(S, kk.view(BH, N, 1)), v.view(BH, N, 1)], dim=2)                  # (BH, N, 2)
        right = torch.cat([(kk * iclr.view(B, H, N)).view(BH, 1, N).neg(), k.view(BH, 1, N)], dim=1)  # (BH, 2, N)
        S_new = new.wkv[i].view(BH, N, N)
        torch.mul(S, decay, out=S_new)
        S_new.baddbmm_(left, right)
        y = torch.bmm(S_new, r.view(BH, N, 1)).view(B, C)
        y = F.group_norm(y, H, L.ln_x[0], L.ln_x[1], dw.eps)
        bonus = (r * k).view(B, H, N).mul_(L.r_k).sum(-1, keepdim=True) * v.view(B, H, N)
        x = torch.addmm(x, (y + bonus.view(B, C)) * gate, L.o_t)
        # ---- channel mix
        h = F.layer_norm(x, (C,), *L.ln2)
        kf = torch.lerp(h, state.ffn_x[i], L.ffn_x_k)
        new.ffn_x[i] = h
        x = torch.addmm(x, torch.relu_(kf @ L.ffn_k_t).square_(), L.ffn_v_t)
    logits = F.layer_norm(x, (C,), *dw.ln_out) @ dw.head_t
    return logits, new
