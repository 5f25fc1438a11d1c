"""Native CPU kernels: ``csrc/fastdecode.c`` built with the machine's C compiler and called through ctypes.

* :class:`NativeDecoder`: one decode step, the equations of :func:`midirwkv.model.decode.decode_step` (the
  tests hold the two to 1e-4), as one call per token instead of ~40 torch ops per layer: at paper size and
  batch 1 that is the difference between paying a dispatch and a thread wake-up per op and streaming the
  weights at memory speed.
* :func:`wkv`: the WKV recurrence over a prompt, sequentially (prefill, no gradients).
* :func:`wkv_train`: the same with gradients (an autograd function; the backward recomputes the states
  between checkpoints kept every ``TRAIN_SEGMENT`` steps).

The library is compiled on first use (about a second; ``-O3 -march=native``) into the user's cache folder
(``$MIDIRWKV_CACHE_DIR``, else ``$XDG_CACHE_HOME/midirwkv``, else ``~/.cache/midirwkv``), keyed by a hash of
the source and flags, and written atomically. Without a working C compiler everything still works: the
torch path runs instead (one warning). ``MIDIRWKV_DECODE=torch`` forces the torch path;
``MIDIRWKV_DECODE=native`` makes a missing compiler an error instead of a fallback.

Weights are fp32, or int8 with one scale per output row (``RWKV7.set_decode(int8=True)``) for the big
projections and the head: a quarter of the bytes per token, logits within the tolerance the tests state.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from midirwkv.errors import BadRequestError
from midirwkv.model.decode import applied_weight
from midirwkv.model.state import State
from midirwkv.model.wkv import DECAY_SCALE

if TYPE_CHECKING:
    from midirwkv.model.rwkv7 import RWKV7

SOURCE = Path(__file__).with_name("csrc") / "fastdecode.c"
FLAG_SETS = (["-O3", "-march=native", "-fno-math-errno"], ["-O3", "-fno-math-errno", "-Wno-psabi"])
"""Tried in order: the first that compiles wins (some compilers reject -march=native)."""
PER_LAYER = 28
"""Pointers per layer in the table ``fastdecode.c`` reads (its ``P_PER_LAYER``)."""
MODES = ("auto", "torch", "native")
MAX_HEAD_SIZE = 256
"""Largest head size the C step takes (its per-head scratch); larger heads decode through torch."""


class _Mat(ctypes.Structure):
    _fields_ = [("f", ctypes.c_void_p), ("q", ctypes.c_void_p), ("s", ctypes.c_void_p),
                ("out", ctypes.c_int64), ("in_", ctypes.c_int64)]


class _Step(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("n_layer", "C", "H", "N", "F", "V", "D", "Dg", "B")] + [
        ("ln_eps", ctypes.c_float), ("lnx_eps", ctypes.c_float), ("decay_scale", ctypes.c_float),
        ("emb", ctypes.c_void_p), ("ln0_w", ctypes.c_void_p), ("ln0_b", ctypes.c_void_p),
        ("lnout_w", ctypes.c_void_p), ("lnout_b", ctypes.c_void_p), ("head", ctypes.POINTER(_Mat)),
        ("layers", ctypes.c_void_p), ("idx", ctypes.c_void_p),
        ("att_x", ctypes.c_void_p), ("ffn_x", ctypes.c_void_p), ("wkv", ctypes.c_void_p),
        ("logits", ctypes.c_void_p), ("n_threads", ctypes.c_int)]


class _Wkv(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("B", "T", "H", "N")] + [
        (n, ctypes.c_void_p) for n in ("r", "w", "k", "v", "a", "b", "S", "y")] + [("n_threads", ctypes.c_int)]


class _WkvTrain(ctypes.Structure):
    _fields_ = [("f", _Wkv), ("K", ctypes.c_int64), ("ckpt", ctypes.c_void_p), ("dy", ctypes.c_void_p),
                ("dST", ctypes.c_void_p)] + [(n, ctypes.c_void_p) for n in ("dr", "dw", "dk", "dv", "da", "db", "dS0")] + [
        ("backward", ctypes.c_int)]


TRAIN_SEGMENT = 32
"""Steps between the states the training forward keeps; the backward recomputes the others (memory ~1/32)."""


def mode() -> str:
    """The decode backend asked for by ``MIDIRWKV_DECODE`` (``auto`` when unset)."""
    value = os.environ.get("MIDIRWKV_DECODE", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise BadRequestError("unknown decode backend", argument="MIDIRWKV_DECODE", value=value,
                              fix=f"set it to one of {', '.join(MODES)} or unset it")
    return value


def cache_dir() -> Path:
    """Where the compiled library is kept."""
    if os.environ.get("MIDIRWKV_CACHE_DIR"):
        return Path(os.environ["MIDIRWKV_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "midirwkv"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


_lock = threading.Lock()


@lru_cache(maxsize=1)
def _library_or_reason() -> tuple[ctypes.CDLL | None, str]:
    """(library, "") or (None, why it could not be built)."""
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found (set CC, or install gcc or clang)"
    src = SOURCE.read_bytes()
    errors = []
    for flags in FLAG_SETS:
        key = hashlib.sha256(src + " ".join([cc, *flags, platform.machine(), platform.system()]).encode())
        lib = cache_dir() / f"fastdecode-{key.hexdigest()[:16]}.so"
        with _lock:
            if not lib.is_file():
                try:
                    lib.parent.mkdir(parents=True, exist_ok=True)
                    fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
                    os.close(fd)
                    cmd = [cc, *flags, "-fPIC", "-shared", "-o", tmp, str(SOURCE), "-lpthread", "-lm"]
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
                    if proc.returncode != 0:
                        os.unlink(tmp)
                        errors.append(f"{' '.join(cmd)}: {proc.stderr.strip()[-400:]}")
                        continue
                    os.replace(tmp, lib)
                except (OSError, subprocess.SubprocessError) as exc:
                    errors.append(f"{cc} {' '.join(flags)}: {exc}")
                    continue
        try:
            dll = ctypes.CDLL(str(lib))
        except OSError as exc:
            errors.append(f"loading {lib}: {exc}")
            continue
        dll.fastdecode_step.argtypes = [ctypes.POINTER(_Step)]
        dll.fastdecode_step.restype = ctypes.c_int
        dll.fastdecode_wkv_train.argtypes = [ctypes.POINTER(_WkvTrain)]
        dll.fastdecode_wkv_train.restype = ctypes.c_int
        return dll, ""
    return None, "; ".join(errors)


_warned = False


def library() -> ctypes.CDLL | None:
    """The compiled library, or None (after one warning) when this machine cannot build it."""
    global _warned
    m = mode()
    if m == "torch":
        return None
    lib, reason = _library_or_reason()
    if lib is None:
        if m == "native":
            raise BadRequestError("the native decode library could not be built", argument="MIDIRWKV_DECODE",
                                  value=m, fix=f"install a C compiler or unset MIDIRWKV_DECODE ({reason})")
        if not _warned:
            _warned = True
            warnings.warn(f"midirwkv: native decode unavailable, using the torch path ({reason})", stacklevel=3)
    return lib


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
    rc = lib.fastdecode_wkv_train(ctypes.byref(p))
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
    """The WKV recurrence with gradients, both directions sequential in C (see ``fastdecode_wkv_train``)."""

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
        rc = library().fastdecode_wkv_train(ctypes.byref(p))
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
    """A model's weights laid out for ``fastdecode.c`` (matrices in panels of 16 outputs, see
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
        st.ln_eps, st.lnx_eps, st.decay_scale = 1e-5, cfg.ln_x_eps, DECAY_SCALE
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
        rc = self.lib.fastdecode_step(ctypes.byref(st))
        if rc == 2:
            raise MemoryError("native decode step: out of memory for its scratch buffers")
        if rc != 0:
            raise RuntimeError(f"native decode step rejected its arguments (code {rc})")
        if inplace and not direct:
            for k, t in parts.items():
                t.copy_(getattr(work, k))
            work = state
        return logits, work
