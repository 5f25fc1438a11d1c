"""The WKV paths agree with the reference loop on outputs, final states and gradients."""

import math

import pytest
import torch

from midirwkv.errors import BadRequestError
from midirwkv.model.wkv import wkv, wkv_chunked, wkv_ref, wkv_step


def make_inputs(B=2, T=45, H=2, N=16, seed=0, dtype=torch.float32):
    """Inputs shaped like the model's: log decay in (-exp(-0.5), 0), a = -kk, b = kk * iclr, |kk| = 1."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, T, H, N, generator=g, dtype=dtype)
    k = torch.randn(B, T, H, N, generator=g, dtype=dtype) * 0.5
    v = torch.randn(B, T, H, N, generator=g, dtype=dtype)
    w = -math.exp(-0.5) * torch.sigmoid(2 * torch.randn(B, T, H, N, generator=g, dtype=dtype))
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=g, dtype=dtype), dim=-1)
    iclr = torch.sigmoid(torch.randn(B, T, H, N, generator=g, dtype=dtype))
    s0 = torch.randn(B, H, N, N, generator=g, dtype=dtype) * 0.3
    return [r, w, k, v, -kk, kk * iclr, s0]


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("chunk", [1, 8, 16, 32, 64])
def test_chunked_matches_reference_outputs(chunk):
    xs = make_inputs()
    y_ref, s_ref = wkv_ref(*xs)
    y, s = wkv_chunked(*xs, chunk=chunk)
    assert rel(y, y_ref) < 1e-5
    assert rel(s, s_ref) < 1e-5


def test_chunked_matches_reference_gradients():
    xs = [x.requires_grad_() for x in make_inputs(T=37)]
    y_ref, s_ref = wkv_ref(*xs)
    y, s = wkv_chunked(*xs, chunk=16)
    gy, gs = torch.randn_like(y_ref), torch.randn_like(s_ref)
    g_ref = torch.autograd.grad((y_ref * gy).sum() + (s_ref * gs).sum(), xs)
    g = torch.autograd.grad((y * gy).sum() + (s * gs).sum(), xs)
    for name, a, b in zip(["r", "w", "k", "v", "a", "b", "s0"], g, g_ref):
        assert rel(a, b) < 1e-4, name


def test_long_sequence_is_stable():
    """Many chunks: cumulative decay must neither underflow nor overflow."""
    xs = make_inputs(B=1, T=600, H=1, N=16, seed=3)
    y_ref, s_ref = wkv_ref(*xs)
    y, s = wkv_chunked(*xs, chunk=32)
    assert torch.isfinite(y).all()
    assert rel(y, y_ref) < 1e-4
    assert rel(s, s_ref) < 1e-4


def test_zero_state_default_and_float64():
    xs = make_inputs(dtype=torch.float64)
    y_ref, _ = wkv_ref(*xs[:-1])
    y, _ = wkv_chunked(*xs[:-1], chunk=8)
    assert rel(y, y_ref.float()) < 1e-5


def test_split_sequence_equals_one_pass():
    """Prefill a prefix in chunks, then step token by token: same as one pass over everything."""
    r, w, k, v, a, b, s0 = make_inputs(T=30)
    y_all, s_all = wkv_chunked(r, w, k, v, a, b, s0, chunk=8)
    y1, s = wkv_chunked(*(x[:, :20] for x in (r, w, k, v, a, b)), s0, chunk=8)
    ys = [y1]
    for t in range(20, 30):
        y_t, s = wkv_step(r[:, t], w[:, t], k[:, t], v[:, t], a[:, t], b[:, t], s)
        ys.append(y_t.unsqueeze(1))
    assert rel(torch.cat(ys, 1), y_all) < 1e-5
    assert rel(s, s_all) < 1e-5


def test_batch_rows_are_independent():
    xs = make_inputs(B=3)
    y, s = wkv_chunked(*xs)
    y1, s1 = wkv_chunked(*(x[1:2] for x in xs))
    assert rel(y[1:2], y1) < 1e-6 and rel(s[1:2], s1) < 1e-6


def test_dispatcher_and_step_does_not_modify_state():
    xs = make_inputs(T=5)
    y, _ = wkv(*xs)
    assert rel(y, wkv_ref(*xs)[0]) < 1e-5
    s0 = xs[-1].clone()
    wkv_step(*(x[:, 0] for x in xs[:-1]), xs[-1])
    assert torch.equal(s0, xs[-1])


def test_bad_shapes_raise():
    r, w, k, v, a, b, s0 = make_inputs()
    with pytest.raises(BadRequestError, match="Fix"):
        wkv_chunked(r, w[:, :3], k, v, a, b, s0)
    with pytest.raises(BadRequestError):
        wkv_ref(r, w, k, v, a, b, s0[:, :1])
    with pytest.raises(BadRequestError):
        wkv_chunked(r[0], w[0], k[0], v[0], a[0], b[0])


def test_chunked_stays_float32_under_bf16_autocast():
    """Training autocasts to bf16; the recurrence must not (its decay factors need float32's mantissa)."""
    args = make_inputs(T=70)
    plain = wkv_chunked(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = wkv_chunked(*args)
        ref = wkv_ref(*args)
    assert torch.equal(cast[0], plain[0]) and torch.equal(cast[1], plain[1])
    assert rel(ref[0], plain[0]) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fla kernel runs on CUDA only")
def test_fla_matches_reference_outputs_and_state():
    """The CUDA path (flash-linear-attention's DPLR kernel, state transposed on the way in and out) against the
    specification, with a start state; run with ``-m gpu`` on a machine with CUDA and ``fla`` installed."""
    pytest.importorskip("fla.ops.generalized_delta_rule")
    from midirwkv.model.wkv import wkv_fla

    xs = make_inputs(B=2, T=96, H=2, N=64)
    y_ref, s_ref = wkv_ref(*xs)
    y, s = wkv_fla(*(t.cuda() for t in xs))
    assert rel(y.cpu(), y_ref) < 2e-3
    assert rel(s.cpu(), s_ref) < 2e-3
