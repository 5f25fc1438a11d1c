"""RWKV-7 ("x070") language model, read top to bottom: time-mix, channel-mix, block, model.

Equations and parameter names follow RWKV-LM's ``RWKV-v7/train_temp/src/model.py`` and the ``rwkv`` package's
``RWKV_x070``, so an RWKV-LM checkpoint loads with a plain key copy (see ``checkpoint.py``). Shapes:
B batch, T time, C = n_embd, H heads, N = head_size, V vocabulary.

Two ways to run the same network:

* ``forward(idx (B, T))``: parallel over time (training, prompt prefill); the WKV runs in chunks.
* ``step(idx (B,))``: one token per call (decode); a lean path on pre-transposed, fused weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midirwkv.config import ModelConfig
from midirwkv.errors import BadRequestError
from midirwkv.model.decode import DecodeWeights, decode_step
from midirwkv.model.ops import DECAY_SCALE
from midirwkv.model.state import State
from midirwkv.model.wkv import DEFAULT_CHUNK, wkv, wkv_chunked, wkv_ref, wkv_step


def _ortho(shape: tuple[int, ...], scale: float) -> Tensor:
    """RWKV-LM's ``ortho_init`` of a low-rank factor: orthogonal rows/cols, gain sqrt(rows/cols) when tall."""
    x = torch.empty(shape)
    gain = math.sqrt(shape[0] / shape[1]) if shape[0] > shape[1] else 1.0
    nn.init.orthogonal_(x, gain=gain * scale)
    return x


def _token_shift(x: Tensor, prev: Tensor) -> Tensor:
    """The previous token's input for each position: ``prev`` then ``x[:, :-1]``. (B, T, C)."""
    return torch.cat([prev.unsqueeze(1), x[:, :-1]], dim=1)


class TimeMix(nn.Module):
    """RWKV-7 time mixing (RWKV-LM ``RWKV_Tmix_x070``): token shift, low-rank gates, the WKV, GroupNorm, output."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.n_head, self.head_size = H, N
        ratio_0_to_1 = layer_id / (cfg.n_layer - 1) if cfg.n_layer > 1 else 0.0
        ratio_1_to_almost0 = 1.0 - layer_id / cfg.n_layer
        ddd = torch.arange(C, dtype=torch.float32).view(1, 1, C) / C

        # token-shift interpolation weights, one per projection
        self.x_r = nn.Parameter(1.0 - ddd.pow(0.2 * ratio_1_to_almost0))
        self.x_w = nn.Parameter(1.0 - ddd.pow(0.9 * ratio_1_to_almost0))
        self.x_k = nn.Parameter(1.0 - ddd.pow(0.7 * ratio_1_to_almost0))
        self.x_v = nn.Parameter(1.0 - ddd.pow(0.7 * ratio_1_to_almost0))
        self.x_a = nn.Parameter(1.0 - ddd.pow(0.9 * ratio_1_to_almost0))
        self.x_g = nn.Parameter(1.0 - ddd.pow(0.2 * ratio_1_to_almost0))

        n = torch.arange(C, dtype=torch.float32)
        linear = n / (C - 1) - 0.5
        zigzag = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
        zigzag = zigzag * zigzag.abs()
        www = -6 + 6 * (n / (C - 1)) ** (1 + 1 * ratio_0_to_1 ** 0.3)

        self.w1 = nn.Parameter(torch.zeros(C, cfg.decay_lora))              # decay: w0 + tanh(x w1) w2
        self.w2 = nn.Parameter(_ortho((cfg.decay_lora, C), 0.1))
        self.w0 = nn.Parameter((www + 0.5 + zigzag * 2.5).view(1, 1, C))
        self.a1 = nn.Parameter(torch.zeros(C, cfg.aaa_lora))                # in-context learning rate
        self.a2 = nn.Parameter(_ortho((cfg.aaa_lora, C), 0.1))
        self.a0 = nn.Parameter((-0.19 + zigzag * 0.3 + linear * 0.4).view(1, 1, C))
        self.v1 = nn.Parameter(torch.zeros(C, cfg.mv_lora))                 # value residual (unused in layer 0)
        self.v2 = nn.Parameter(_ortho((cfg.mv_lora, C), 0.1))
        self.v0 = nn.Parameter((0.73 - linear * 0.4).view(1, 1, C))
        self.g1 = nn.Parameter(torch.zeros(C, cfg.gate_lora))               # output gate
        self.g2 = nn.Parameter(_ortho((cfg.gate_lora, C), 0.1))
        self.k_k = nn.Parameter((0.71 - linear * 0.1).view(1, 1, C))
        self.k_a = nn.Parameter(torch.full((1, 1, C), 1.02))
        self.r_k = nn.Parameter(torch.full((H, N), -0.04))

        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=cfg.ln_x_eps)

    def mix_inputs(self, x: Tensor, prev: Tensor) -> tuple[Tensor, ...]:
        """Token-shift interpolations ``x + (prev - x) * x_*`` for r, w, k, v, a, g. Each (..., C)."""
        xx = prev - x
        return tuple(x + xx * m for m in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))

    def projections(self, x: Tensor, prev: Tensor, v_first: Tensor | None):
        """r, log decay, k, v, kk, iclr, g and v_first, all (B, T, C) (``prev`` is (B, T, C) shifted input)."""
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        xr, xw, xk, xv, xa, xg = self.mix_inputs(x, prev)
        r = self.receptance(xr)
        w = -DECAY_SCALE * torch.sigmoid(self.w0 + torch.tanh(xw @ self.w1) @ self.w2)   # log decay
        k = self.key(xk)
        v = self.value(xv)
        if self.layer_id == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)   # value residual
        iclr = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)                       # in-context learning rate
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0).view(B, T, C)
        k = k * (1 + (iclr - 1) * self.k_a)
        return r, w, k, v, kk, iclr, g, v_first

    def finish(self, y: Tensor, r: Tensor, k: Tensor, v: Tensor, g: Tensor) -> Tensor:
        """GroupNorm of the WKV read-out, the r.k bonus on v, the gate and the output projection. (B, T, C)."""
        B, T, C = y.shape
        H, N = self.n_head, self.head_size
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        bonus = (r.view(B, T, H, N) * k.view(B, T, H, N) * self.r_k).sum(-1, keepdim=True) * v.view(B, T, H, N)
        return self.output((y + bonus.view(B, T, C)) * g)

    def forward(self, x: Tensor, prev: Tensor, s0: Tensor, v_first: Tensor | None, chunk: int = DEFAULT_CHUNK,
                reference: bool = False, kernel: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
        """``x (B, T, C)``, last input ``prev (B, C)``, WKV state ``s0 (B, H, N, N)`` -> (out, state, v_first).

        ``kernel``: ``"auto"`` (``wkv.wkv``: the fastest available path) or ``"chunked"`` (``wkv.wkv_chunked``)."""
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        r, w, k, v, kk, iclr, g, v_first = self.projections(x, _token_shift(x, prev), v_first)
        heads = [t.view(B, T, H, N) for t in (r, w, k, v, -kk, kk * iclr)]     # (B, T, H, N)
        if reference:
            y, s = wkv_ref(*heads, s0)
        elif T == 1:
            y, s = wkv_step(*(t[:, 0] for t in heads), s0)
            y = y.unsqueeze(1)
        elif kernel == "chunked":
            y, s = wkv_chunked(*heads, s0, chunk)
        else:
            y, s = wkv(*heads, s0, chunk)
        return self.finish(y.reshape(B, T, C), r, k, v, g), s, v_first


class ChannelMix(nn.Module):
    """RWKV-7 channel mixing (RWKV-LM ``RWKV_CMix_x070``): token shift and a ReLU^2 feed-forward."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        C = cfg.n_embd
        ratio_1_to_almost0 = 1.0 - layer_id / cfg.n_layer
        ddd = torch.arange(C, dtype=torch.float32).view(1, 1, C) / C
        self.x_k = nn.Parameter(1.0 - ddd.pow(ratio_1_to_almost0 ** 4))
        self.key = nn.Linear(C, cfg.ffn_width, bias=False)
        self.value = nn.Linear(cfg.ffn_width, C, bias=False)

    def forward(self, x: Tensor, prev: Tensor) -> Tensor:
        """``x (B, T, C)``, shifted input ``prev (B, T, C)`` -> (B, T, C)."""
        k = x + (prev - x) * self.x_k
        if torch.is_grad_enabled():
            return self.value(torch.relu(self.key(k)).square())
        return self.value(torch.relu_(self.key(k)).square_())   # inference: no (B, T, F) temporaries


class Block(nn.Module):
    """Pre-LayerNorm residual block; layer 0 also normalises the embedding (``ln0``)."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(cfg.n_embd)
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.att = TimeMix(cfg, layer_id)
        self.ffn = ChannelMix(cfg, layer_id)


class RWKV7(nn.Module):
    """The RWKV-7 language model. ``forward`` for sequences, ``step`` for one token, ``init_state`` to start."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise BadRequestError("RWKV7 needs a ModelConfig", argument="cfg", value=type(cfg).__name__,
                                  fix="pass midirwkv.config.ModelConfig(...)")
        self.cfg = cfg
        self.wkv_chunk = DEFAULT_CHUNK
        """Chunk length of the parallel WKV (16-64 are all stable)."""
        self.wkv_kernel = "auto"
        """WKV path of sequences: ``"auto"`` (``wkv.wkv``: fla on CUDA when installed, the native C recurrence on
        the CPU, else the chunked form) or ``"chunked"`` (always ``wkv.wkv_chunked``, the tested PyTorch path)."""
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)])
        self.ln_out = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self._decode_cache: DecodeWeights | None = None
        self._decode_int8 = False
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------- init

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """RWKV-LM's ``generate_init_weight``: tiny embedding, orthogonal matrices, zero output projections.

        Vectors and low-rank factors keep the values set in the blocks' constructors; ``ln_x`` weights grow
        with depth as ``((1 + layer) / n_layer) ** 0.7``.
        """
        cfg = self.cfg
        for name, p in self.named_parameters():
            if name.endswith("ln_x.weight"):
                layer = int(name.split(".")[1])
                p.fill_(((1 + layer) / cfg.n_layer) ** 0.7)
            elif ".ln" in name or "ln_" in name or not name.endswith(".weight"):
                continue
            elif name == "emb.weight":
                nn.init.uniform_(p, a=-1e-4, b=1e-4)
            elif name == "head.weight":
                scale = 0.5 * math.sqrt(cfg.vocab_size / cfg.n_embd) if cfg.vocab_size > cfg.n_embd else 0.5
                nn.init.orthogonal_(p, gain=scale)
            elif ".att.output." in name or ".ffn.value." in name:
                nn.init.zeros_(p)
            else:
                nn.init.orthogonal_(p, gain=0.1 if ".att.key." in name else 1.0)

    # ------------------------------------------------------------------------------------------- state

    @property
    def state_tuning(self) -> bool:
        """True when each layer carries a trainable initial WKV state (``blocks.N.att.time_state``)."""
        return hasattr(self.blocks[0].att, "time_state")

    def enable_state_tuning(self, freeze: bool = True, init: Tensor | None = None) -> list[nn.Parameter]:
        """Add a learnable initial WKV state per layer ``(H, N, N)``, ``[head, value, key]`` like RWKV-PEFT.

        With ``freeze`` every other parameter stops learning. ``init (L, H, N, N)`` sets the starting values
        (default zeros, i.e. the untuned model). Returns the new parameters.
        """
        cfg = self.cfg
        shape = (cfg.n_layer, cfg.n_head, cfg.head_size, cfg.head_size)
        if init is not None and tuple(init.shape) != shape:
            raise BadRequestError("initial state has the wrong shape", argument="init", value=tuple(init.shape),
                                  fix=f"pass a tensor of shape {shape} (layers, heads, value, key)")
        if freeze:
            for p in self.parameters():
                p.requires_grad_(False)
        params = []
        device = self.emb.weight.device
        for i, block in enumerate(self.blocks):
            if not hasattr(block.att, "time_state"):
                block.att.time_state = nn.Parameter(torch.zeros(shape[1:], device=device))
            if init is not None:
                with torch.no_grad():
                    block.att.time_state.copy_(init[i])
            block.att.time_state.requires_grad_(True)
            params.append(block.att.time_state)
        return params

    def tuned_state(self) -> Tensor | None:
        """The learned initial WKV state ``(L, H, N, N)``, or None without state tuning."""
        if not self.state_tuning:
            return None
        return torch.stack([b.att.time_state for b in self.blocks])

    def init_state(self, batch: int) -> State:
        """The state before the first token: zeros, with the learned WKV start when state tuning is on."""
        if not isinstance(batch, int) or batch < 1:
            raise BadRequestError("batch must be a positive integer", argument="batch", value=batch,
                                  fix="pass the number of sequences, e.g. 1")
        cfg = self.cfg
        ref = self.emb.weight
        state = State.zeros(cfg.n_layer, batch, cfg.n_embd, cfg.n_head, cfg.head_size, ref.dtype, ref.device)
        tuned = self.tuned_state()
        if tuned is not None:
            state.wkv = tuned.float().unsqueeze(1).expand(-1, batch, -1, -1, -1).clone()   # (L, B, H, N, N)
        return state

    def _check_state(self, state: State, batch: int) -> None:
        cfg = self.cfg
        want = (cfg.n_layer, batch, cfg.n_head, cfg.head_size, cfg.head_size)
        if tuple(state.wkv.shape) != want or tuple(state.att_x.shape) != (cfg.n_layer, batch, cfg.n_embd):
            raise BadRequestError("state does not fit this model and batch", argument="state",
                                  value=tuple(state.wkv.shape),
                                  fix=f"use model.init_state({batch}) or a state returned for wkv shape {want}")

    def _check_idx(self, idx: Tensor, dims: int) -> None:
        if idx.dim() != dims or idx.dtype not in (torch.long, torch.int32, torch.int64):
            raise BadRequestError(f"token ids must be an integer tensor with {dims} dims", argument="idx",
                                  value=(tuple(idx.shape), str(idx.dtype)),
                                  fix="pass torch.long ids shaped (B, T) to forward and (B,) to step")

    # ------------------------------------------------------------------------------------------- forward

    def forward(self, idx: Tensor, state: State | None = None, return_state: bool = False,
                reference: bool = False) -> Tensor | tuple[Tensor, State]:
        """Logits ``(B, T, V)`` for token ids ``idx (B, T)`` after ``state`` (None: ``init_state``).

        With ``return_state`` also the state after the last token. ``reference`` runs the WKV as the plain
        sequential loop (the spec; slow). The input state is never modified.
        """
        self._check_idx(idx, 2)
        B, T = idx.shape
        if T == 0:
            raise BadRequestError("empty sequence", argument="idx", value=tuple(idx.shape),
                                  fix="pass at least one token per row")
        if state is None:
            state = self.init_state(B)
        self._check_state(state, B)
        x = self.emb(idx)                                                  # (B, T, C)
        att_x, ffn_x, wkv_s = [], [], []
        v_first = None
        for i, block in enumerate(self.blocks):
            if i == 0:
                x = block.ln0(x)
            h = block.ln1(x)
            dx, s, v_first = block.att(h, state.att_x[i], state.wkv[i], v_first, self.wkv_chunk, reference,
                                          self.wkv_kernel)
            att_x.append(h[:, -1])
            wkv_s.append(s)
            x = x + dx
            h = block.ln2(x)
            x = x + block.ffn(h, _token_shift(h, state.ffn_x[i]))
            ffn_x.append(h[:, -1])
        logits = self.head(self.ln_out(x))                                 # (B, T, V)
        if not return_state:
            return logits
        return logits, State(att_x=torch.stack(att_x), ffn_x=torch.stack(ffn_x), wkv=torch.stack(wkv_s))

    # ------------------------------------------------------------------------------------------- decode

    def step(self, idx: Tensor, state: State, inplace: bool = False) -> tuple[Tensor, State]:
        """One decode step: ids ``idx (B,)`` after ``state`` -> (logits (B, V), new state).

        Under autograd (training a state, tests) this runs the module code; under ``torch.no_grad`` /
        ``inference_mode`` it runs the lean path on cached decode-layout weights (rebuilt when a weight
        changes). ``inplace=True`` (lean path only) overwrites ``state`` instead of allocating a new one:
        use it in decode loops that do not keep the previous state.
        """
        self._check_idx(idx, 1)
        self._check_state(state, idx.shape[0])
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            logits, new = self.forward(idx.unsqueeze(1), state, return_state=True)
            return logits[:, 0], new
        return decode_step(self._decode_weights(), idx, state, inplace)

    def _decode_weights(self) -> DecodeWeights:
        """The decode layout of the current weights, rebuilt when any weight changed or was replaced."""
        cache = self._decode_cache
        if cache is None or not cache.is_current():
            cache = self._decode_cache = DecodeWeights.build(self, int8=self._decode_int8)
        return cache

    def set_decode(self, int8: bool = False) -> None:
        """Decode with int8 weights (one scale per output row; native decoder only) or fp32 (the default).

        int8 reads a quarter of the weight bytes per token; logits move by about 1e-2 (see the tests).
        """
        if not isinstance(int8, bool):
            raise BadRequestError("int8 must be True or False", argument="int8", value=int8,
                                  fix="pass int8=True or int8=False")
        self._decode_int8 = int8
        self._decode_cache = None

    def invalidate_decode_cache(self) -> None:
        """Forget the decode layout; call after replacing a parameter or submodule by hand."""
        self._decode_cache = None

    def _apply(self, fn, recurse=True):
        self._decode_cache = None
        return super()._apply(fn, recurse)
