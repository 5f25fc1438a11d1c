"""RWKV7: RWKV-LM parameter names and init, parallel == reference == recurrent, state handling, state tuning."""

import pytest
import torch
from model_helpers import perturbed_model

from midirwkv.config import ModelConfig
from midirwkv.errors import BadRequestError
from midirwkv.model import RWKV7, State

TINY = ModelConfig(vocab_size=100, n_layer=2, n_embd=64, head_size=32, decay_lora=8, aaa_lora=8, mv_lora=8,
                   gate_lora=16)


def tiny_model(seed=0, cfg=TINY):
    return perturbed_model(cfg, seed)


def close(a, b, tol=1e-5):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item() < tol


def test_parameter_names_and_shapes_are_rwkv_lm_x070():
    sd = RWKV7(TINY).state_dict()
    C, H, N, F = 64, 2, 32, 256
    expect = {"emb.weight": (100, C), "ln_out.weight": (C,), "ln_out.bias": (C,), "head.weight": (100, C),
              "blocks.0.ln0.weight": (C,), "blocks.0.ln0.bias": (C,)}
    for i in range(2):
        p = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            expect[p + ln + ".weight"] = (C,)
            expect[p + ln + ".bias"] = (C,)
        for x in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a"):
            expect[p + "att." + x] = (1, 1, C)
        for x, d in (("w", 8), ("a", 8), ("v", 8), ("g", 16)):
            expect[p + f"att.{x}1"] = (C, d)
            expect[p + f"att.{x}2"] = (d, C)
        expect[p + "att.r_k"] = (H, N)
        for x in ("receptance", "key", "value", "output"):
            expect[p + f"att.{x}.weight"] = (C, C)
        expect[p + "att.ln_x.weight"] = (C,)
        expect[p + "att.ln_x.bias"] = (C,)
        expect[p + "ffn.x_k"] = (1, 1, C)
        expect[p + "ffn.key.weight"] = (F, C)
        expect[p + "ffn.value.weight"] = (C, F)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expect


def test_paper_size_has_35_1m_parameters():
    n = sum(p.numel() for p in RWKV7(ModelConfig()).parameters())
    assert abs(n - 35.1e6) < 0.1e6


def test_rwkv_lm_initialisation():
    torch.manual_seed(0)
    m = RWKV7(TINY)
    assert m.emb.weight.abs().max() <= 1e-4
    for b in m.blocks:
        assert not b.att.output.weight.any() and not b.ffn.value.weight.any()
        assert not b.att.w1.any() and not b.att.g1.any()
    assert torch.allclose(m.blocks[0].att.ln_x.weight, torch.full((64,), 0.5 ** 0.7))
    assert torch.allclose(m.blocks[1].att.ln_x.weight, torch.ones(64))
    assert torch.allclose(m.blocks[0].att.r_k, torch.full((2, 32), -0.04))
    # orthogonal receptance with gain 1
    W = m.blocks[0].att.receptance.weight
    assert torch.allclose(W @ W.t(), torch.eye(64), atol=1e-5)
    logits = m(torch.randint(0, 100, (1, 8)))
    assert torch.isfinite(logits).all()


def test_forward_matches_reference_loop_and_gradients():
    m = tiny_model()
    m.wkv_chunk = 8
    idx = torch.randint(0, 100, (2, 21))
    out = m(idx)
    ref = m(idx, reference=True)
    assert close(out, ref)
    g = torch.autograd.grad(out.square().sum(), m.blocks[1].att.w1)[0]
    g_ref = torch.autograd.grad(ref.square().sum(), m.blocks[1].att.w1)[0]
    assert close(g, g_ref, 1e-4)


def test_step_matches_forward_batch_and_input_state_untouched():
    m = tiny_model()
    idx = torch.randint(0, 100, (3, 20))
    full, s_full = m(idx, return_state=True)
    state = m.init_state(3)
    before = state.clone()
    outs = []
    with torch.no_grad():
        for t in range(20):
            lo, state = m.step(idx[:, t], state)
            outs.append(lo)
    assert close(torch.stack(outs, 1), full)
    assert close(state.wkv, s_full.wkv) and close(state.att_x, s_full.att_x) and close(state.ffn_x, s_full.ffn_x)
    assert all(torch.equal(getattr(before, k), getattr(m.init_state(3), k)) for k in ("att_x", "ffn_x", "wkv"))


def test_step_with_autograd_matches_lean_path():
    m = tiny_model()
    idx = torch.randint(0, 100, (2,))
    s = m.init_state(2)
    lo, s1 = m.step(idx, s)
    with torch.inference_mode():
        lo2, s2 = m.step(idx, s)
    assert lo.requires_grad and close(lo2, lo.detach()) and close(s2.wkv, s1.wkv.detach())


def test_prefill_then_step_equals_one_pass():
    m = tiny_model(1)
    idx = torch.randint(0, 100, (2, 40))
    full = m(idx)
    with torch.no_grad():
        _, s = m(idx[:, :17], return_state=True)
        lo_mid, s = m(idx[:, 17:30], state=s, return_state=True)
        outs = [lo_mid]
        for t in range(30, 40):
            lo, s = m.step(idx[:, t], s)
            outs.append(lo.unsqueeze(1))
    assert close(torch.cat(outs, 1), full[:, 17:])


def test_decode_cache_follows_weight_updates():
    m = tiny_model()
    idx = torch.tensor([5])
    with torch.no_grad():
        a, _ = m.step(idx, m.init_state(1))
        m.head.weight.mul_(2)
        b, _ = m.step(idx, m.init_state(1))
    assert close(b, 2 * a)


def test_state_helpers():
    m = tiny_model()
    with torch.no_grad():
        _, s = m(torch.randint(0, 100, (3, 5)), return_state=True)
    assert s.batch == 3 and s.n_layer == 2
    row = s.index(1)
    assert row.batch == 1 and torch.equal(row.wkv[:, 0], s.wkv[:, 1])
    big = row.expand(4)
    assert big.batch == 4 and torch.equal(big.att_x[:, 3], s.att_x[:, 1])
    sel = s.select([2, 0])
    assert torch.equal(sel.ffn_x[:, 0], s.ffn_x[:, 2])
    c = s.clone()
    c.put(0, s.index(2))
    assert torch.equal(c.wkv[:, 0], s.wkv[:, 2]) and not torch.equal(s.wkv[:, 0], s.wkv[:, 2])
    back = State.from_tensors(s.to_tensors())
    assert torch.equal(back.wkv, s.wkv)
    assert State.cat([s, row]).batch == 4
    # rows of a batched step equal separate batch-1 steps
    with torch.no_grad():
        lo, _ = m.step(torch.tensor([1, 2, 3]), s)
        lo1, _ = m.step(torch.tensor([2]), s.index(1))
    assert close(lo[1:2], lo1)


def test_state_tuning_only_the_state_learns():
    m = tiny_model()
    m.train()
    params = m.enable_state_tuning()
    assert [tuple(p.shape) for p in params] == [(2, 32, 32)] * 2
    assert m.init_state(2).wkv.shape == (2, 2, 2, 32, 32)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=5e-2)
    idx = torch.randint(0, 100, (2, 12))
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(m(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = m.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"blocks.0.att.time_state", "blocks.1.att.time_state"}
    # the tuned start is what init_state returns, and step/forward start from it
    m.eval()
    with torch.no_grad():
        assert torch.equal(m.init_state(1).wkv[:, 0], m.tuned_state())
        lo, _ = m.step(idx[:1, 0], m.init_state(1))
        assert close(lo, m(idx[:1, :1])[:, 0])


def test_errors_are_typed():
    m = tiny_model()
    with pytest.raises(BadRequestError, match="Fix"):
        m(torch.zeros(3, dtype=torch.long))
    with pytest.raises(BadRequestError):
        m.step(torch.zeros(2, dtype=torch.long), m.init_state(1))
    with pytest.raises(BadRequestError):
        m.init_state(0)
    with pytest.raises(BadRequestError):
        m.init_state(2).expand(3)
    with pytest.raises(BadRequestError):
        RWKV7({"n_layer": 2})


def test_inplace_step_matches():
    m = tiny_model()
    idx = torch.randint(0, 100, (2, 6))
    with torch.no_grad():
        a, b = m.init_state(2), m.init_state(2)
        for t in range(6):
            lo_a, a = m.step(idx[:, t], a)
            lo_b, b2 = m.step(idx[:, t], b, inplace=True)
            assert b2 is b
            assert torch.allclose(lo_a, lo_b) and torch.allclose(a.wkv, b.wkv) and torch.equal(a.att_x, b.att_x)


def test_chunked_kernel_choice_computes_the_same_model():
    """``wkv_kernel="chunked"`` (the device runs' tested path) and the default dispatch agree."""
    from midirwkv.config import ModelConfig
    from midirwkv.model.rwkv7 import RWKV7

    torch.manual_seed(0)
    m = RWKV7(ModelConfig(vocab_size=50, n_layer=2, n_embd=64, head_size=32, decay_lora=8, aaa_lora=8, mv_lora=8,
                          gate_lora=16)).eval()
    idx = torch.randint(0, 50, (2, 40))
    with torch.no_grad():
        auto = m(idx)
        m.wkv_kernel = "chunked"
        chunked = m(idx)
    assert torch.allclose(auto, chunked, atol=1e-4, rtol=1e-4)
