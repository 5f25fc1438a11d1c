"""LoRA: wrapping keeps the model unchanged, only adapters learn, merge is exact, adapter files round-trip."""

import pytest
import torch

from midirwkv.config import ModelConfig
from midirwkv.errors import BadRequestError, CheckpointError
from midirwkv.model import RWKV7, apply_lora, load_adapter, merge_lora, save_adapter
from midirwkv.model.lora import LoRALinear, lora_modules

TINY = ModelConfig(vocab_size=100, n_layer=2, n_embd=64, head_size=32, decay_lora=8, aaa_lora=8, mv_lora=8,
                   gate_lora=16)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = RWKV7(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def train_steps(model, n=3):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    idx = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(1))
    for _ in range(n):
        loss = torch.nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_apply_lora_targets_and_identity_at_start():
    m = tiny_model()
    idx = torch.randint(0, 100, (1, 9))
    before = m(idx).detach()
    names = apply_lora(m, rank=4, alpha=4)
    assert sorted(n.split(".", 2)[2] for n in names) == sorted(
        ["att.receptance", "att.key", "att.value", "att.output", "ffn.key", "ffn.value"] * 2)
    assert torch.allclose(m(idx), before)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    assert "blocks.0.att.key.weight" in m.state_dict()


def test_only_lora_changes_and_merge_gives_identical_logits():
    m = tiny_model()
    apply_lora(m, rank=4, alpha=8)
    base = {k: v.clone() for k, v in m.state_dict().items()}
    train_steps(m)
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, base[k])}
    assert changed and all(k.endswith((".lora_A", ".lora_B")) for k in changed)
    m.eval()
    idx = torch.randint(0, 100, (2, 15))
    with torch.no_grad():
        lo = m(idx)
        step_lo, _ = m.step(idx[:, 0], m.init_state(2))       # lean decode path uses merged weights
        merge_lora(m)
        assert not lora_modules(m)
        assert torch.allclose(m(idx), lo, atol=1e-5)
        assert torch.allclose(step_lo, lo[:, 0], atol=1e-5)


def test_adapter_round_trip(tmp_path):
    m = tiny_model()
    apply_lora(m, rank=4, alpha=4, targets=("att.key", "ffn.value"))
    m.enable_state_tuning(freeze=False)
    train_steps(m)
    path = save_adapter(m, tmp_path / "adapter.safetensors")
    assert path.stat().st_size < 100_000
    fresh = tiny_model()
    load_adapter(fresh, path)
    assert isinstance(fresh.blocks[0].att.key, LoRALinear) and not isinstance(fresh.blocks[0].att.value, LoRALinear)
    assert fresh.state_tuning
    idx = torch.randint(0, 100, (1, 8))
    assert torch.allclose(fresh(idx), m(idx), atol=1e-6)


def test_adapter_errors(tmp_path):
    with pytest.raises(BadRequestError, match="no adapter"):
        save_adapter(tiny_model(), tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_adapter(tiny_model(), tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_adapter(tiny_model(), bad)
    with pytest.raises(BadRequestError):
        apply_lora(tiny_model(), rank=0, alpha=4)
    with pytest.raises(BadRequestError, match="unknown"):
        apply_lora(tiny_model(), rank=4, alpha=4, targets=("att.gate",))
    other = ModelConfig(vocab_size=100, n_layer=2, n_embd=96, head_size=32, decay_lora=8, aaa_lora=8, mv_lora=8,
                        gate_lora=16)
    m = tiny_model()
    apply_lora(m, rank=4, alpha=4)
    path = save_adapter(m, tmp_path / "ok.safetensors")
    with pytest.raises(CheckpointError, match="shape"):
        load_adapter(RWKV7(other), path)
