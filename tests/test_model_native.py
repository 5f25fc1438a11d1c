"""Native decode (csrc/native.c): the same numbers as the torch path, the fallback, int8 weights."""

import importlib
import subprocess
import sys

import pytest
import torch
from model_helpers import perturbed_model

from midirwkv.config import ModelConfig
from midirwkv.errors import BadRequestError
from midirwkv.model import State, native
from midirwkv.model.decode import DecodeWeights, decode_step
from midirwkv.model.lora import apply_lora

# odd sizes on purpose: a low-rank width that is not a multiple of 16, three heads, a vocabulary of 101
CFG = ModelConfig(vocab_size=101, n_layer=3, n_embd=96, head_size=32, decay_lora=12, aaa_lora=8, mv_lora=8,
                  gate_lora=20)

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler: the torch path runs")


def model(seed=0, cfg=CFG):
    return perturbed_model(cfg, seed)


def decode_all(m, ids):
    """Logits (B, T, V) and the final state of ``m.step`` over ``ids`` (B, T), token by token."""
    s, outs = m.init_state(ids.shape[0]), []
    with torch.inference_mode():
        for t in range(ids.shape[1]):
            lo, s = m.step(ids[:, t], s)
            outs.append(lo)
    return torch.stack(outs, 1), s


def torch_path(m):
    """The torch decode layout of ``m`` (what runs without the native library)."""
    dw = DecodeWeights(m)
    assert dw.native is None
    return dw


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("batch", [1, 3, 4, 9])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_native_equals_torch_path_over_many_steps(batch, threads):
    m = model()
    ref = torch_path(m)
    native = DecodeWeights.build(m).native
    assert native is not None
    ids = torch.randint(0, CFG.vocab_size, (batch, 60))
    with torch.inference_mode():
        a, b = m.init_state(batch), m.init_state(batch)
        for t in range(60):
            la, a = decode_step(ref, ids[:, t], a)
            lb, b = native.step(ids[:, t], b, inplace=True, threads=threads)
            assert rel(lb, la) < 1e-4
    assert rel(b.wkv, a.wkv) < 1e-4 and rel(b.att_x, a.att_x) < 1e-5 and rel(b.ffn_x, a.ffn_x) < 1e-5


def test_step_uses_native_and_matches_full_forward():
    m = model(1)
    ids = torch.randint(0, CFG.vocab_size, (2, 30))
    with torch.inference_mode():
        full, s_full = m(ids, return_state=True)
    got, s = decode_all(m, ids)
    assert m._decode_cache.native is not None
    assert rel(got, full) < 1e-4 and rel(s.wkv, s_full.wkv) < 1e-4


def test_not_inplace_leaves_state_and_non_contiguous_state_works():
    m = model()
    ids = torch.tensor([3, 7])
    with torch.inference_mode():
        _, s = m(torch.randint(0, CFG.vocab_size, (2, 8)), return_state=True)
        before = s.clone()
        lo, new = m.step(ids, s)
        assert all(torch.equal(getattr(s, k), getattr(before, k)) for k in ("att_x", "ffn_x", "wkv"))
        # a state whose tensors are strided views (every other row of a doubled batch) decodes the same
        big = {k: torch.repeat_interleave(getattr(before, k), 2, dim=1) for k in ("att_x", "ffn_x", "wkv")}
        view = State(**{k: t[:, ::2] for k, t in big.items()})
        assert not view.att_x.is_contiguous()
        lo2, out = m.step(ids, view, inplace=True)
        assert out is view and rel(lo2, lo) < 1e-5 and rel(view.wkv, new.wkv) < 1e-5
        assert torch.equal(big["wkv"][:, ::2], new.wkv)


def test_lora_and_tuned_state_go_through_native():
    m = model(2)
    apply_lora(m, rank=4, alpha=8)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.1)
    m.invalidate_decode_cache()
    ids = torch.randint(0, CFG.vocab_size, (1, 12))
    with torch.inference_mode():
        full = m(ids)
    got, _ = decode_all(m, ids)
    assert m._decode_cache.native is not None
    assert rel(got, full) < 1e-4


def test_int8_weights_stay_close_and_read_a_quarter_of_the_bytes():
    m = model(3)
    ids = torch.randint(0, CFG.vocab_size, (2, 40))
    with torch.inference_mode():
        full = m(ids)
        fp32_bytes = DecodeWeights.build(m).native.weight_bytes
    m.set_decode(int8=True)
    got, _ = decode_all(m, ids)
    q = m._decode_cache.native
    # stated tolerance: 5 % of the largest logit; the argmax agrees almost everywhere
    assert rel(got, full) < 0.05
    assert (got.argmax(-1) == full.argmax(-1)).float().mean() > 0.9
    assert q.int8 and q.weight_bytes < 0.45 * fp32_bytes
    m.set_decode(int8=False)
    with torch.inference_mode():
        lo, _ = m.step(ids[:, 0], m.init_state(2))
    assert rel(lo, full[:, 0]) < 1e-4
    with pytest.raises(BadRequestError):
        m.set_decode(int8="yes")


def test_quantize_rows_round_trip():
    w = torch.randn(33, 70)
    q, s = native.quantize_rows(w)
    assert q.dtype == torch.int8 and s.shape == (33,) and q.abs().max() <= 127
    assert ((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-6).all()


def test_torch_fallback_and_bad_mode(monkeypatch):
    m = model()
    monkeypatch.setenv("MIDIRWKV_DECODE", "torch")
    m.invalidate_decode_cache()
    with torch.inference_mode():
        m.step(torch.tensor([1]), m.init_state(1))
    assert m._decode_cache.native is None
    with pytest.raises(BadRequestError, match="int8"):
        m.set_decode(int8=True)
        with torch.inference_mode():
            m.step(torch.tensor([1]), m.init_state(1))
    monkeypatch.setenv("MIDIRWKV_DECODE", "fast")
    with pytest.raises(BadRequestError, match="MIDIRWKV_DECODE"):
        native.mode()


def test_no_compiler_falls_back_with_a_warning(tmp_path):
    """A machine without a C compiler decodes through torch after one warning (run in a clean process)."""
    code = (
        "import warnings, torch\n"
        "from midirwkv.model import RWKV7\n"
        "from midirwkv.config import ModelConfig\n"
        "m = RWKV7(ModelConfig(vocab_size=50, n_layer=1, n_embd=64, head_size=32)).eval()\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    with torch.inference_mode():\n"
        "        lo, _ = m.step(torch.tensor([1]), m.init_state(1))\n"
        "assert m._decode_cache.native is None and lo.shape == (1, 50)\n"
        "assert any('native decode unavailable' in str(x.message) for x in w), [str(x.message) for x in w]\n"
        "print('ok')\n")
    env = {"PATH": str(tmp_path), "CC": "", "MIDIRWKV_CACHE_DIR": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_out_of_range_ids_are_refused_not_read():
    m = model()
    with torch.inference_mode(), pytest.raises(BadRequestError, match="vocabulary"):
        m.step(torch.tensor([CFG.vocab_size]), m.init_state(1))
    with torch.inference_mode(), pytest.raises(BadRequestError, match="vocabulary"):
        m.step(torch.tensor([-1]), m.init_state(1))


def wkv_inputs(B=2, T=70, H=3, N=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    w = -0.6 * torch.rand(B, T, H, N, generator=g)
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=g), dim=-1)
    s0 = 0.1 * torch.randn(B, H, N, N, generator=g)
    return (r, w, k, v, -kk, kk * torch.rand(B, T, H, N, generator=g)), s0


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_native_wkv_equals_the_reference_loop(threads):
    from midirwkv.model.wkv import wkv_ref

    ins, s0 = wkv_inputs()
    y_ref, s_ref = wkv_ref(*ins, s0)
    before = s0.clone()
    y, s = native.wkv(*ins, s0, threads=threads)
    assert torch.equal(s0, before)
    assert rel(y, y_ref) < 1e-5 and rel(s, s_ref) < 1e-5
    y0, s0_out = native.wkv(*ins)                       # zero start state
    y0_ref, s0_ref = wkv_ref(*ins)
    assert rel(y0, y0_ref) < 1e-5 and rel(s0_out, s0_ref) < 1e-5


def test_wkv_picks_native_without_gradients_and_chunked_with(monkeypatch):
    wkv_mod = importlib.import_module("midirwkv.model.wkv")   # the module (the package exports the function)
    ins, s0 = wkv_inputs(T=40)
    calls = []
    real = native.wkv
    monkeypatch.setattr(native, "wkv", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        y1, _ = wkv_mod.wkv(*ins, s0)
    assert calls == [1]
    leaf = ins[0].clone().requires_grad_(True)
    y2, _ = wkv_mod.wkv(leaf, *ins[1:], s0)
    assert calls == [1] and y2.requires_grad
    assert rel(y1, y2.detach()) < 1e-4


@pytest.mark.parametrize("T", [1, 31, 32, 75])
def test_native_wkv_gradients_equal_the_reference_loop(T):
    """Every input's gradient and the start state's, with a loss on both the outputs and the final state."""
    from midirwkv.model.wkv import wkv_ref

    ins, s0 = wkv_inputs(T=T, seed=T)
    a = [t.clone().requires_grad_(True) for t in (*ins, s0)]
    b = [t.clone().requires_grad_(True) for t in (*ins, s0)]
    g = torch.Generator().manual_seed(1)
    gy, gs = torch.randn(a[0].shape, generator=g), torch.randn(s0.shape, generator=g)
    y1, s1 = wkv_ref(*a)
    ((y1 * gy).sum() + (s1 * gs).sum()).backward()
    y2, s2 = native.wkv_train(*b)
    ((y2 * gy).sum() + (s2 * gs).sum()).backward()
    assert rel(y2, y1) < 1e-5 and rel(s2, s1) < 1e-5
    for name, x1, x2 in zip(("r", "w", "k", "v", "a", "b", "s0"), a, b):
        assert rel(x2.grad, x1.grad) < 1e-4, name


def test_model_gradients_native_equal_chunked(monkeypatch):
    """A training step's gradients are the same whichever WKV path runs (native here, chunked with torch)."""
    ids = torch.randint(0, CFG.vocab_size, (2, 50))

    def grads():
        m = model(4).train()
        loss = torch.nn.functional.cross_entropy(m(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    native = grads()
    monkeypatch.setenv("MIDIRWKV_DECODE", "torch")
    chunked = grads()
    assert native.keys() == chunked.keys() and len(native) > 20
    for name, g in native.items():
        assert rel(g, chunked[name]) < 1e-3, name
