"""Checkpoint folders and RWKV-LM .pth files round-trip; damaged input gives CheckpointError with a fix."""

import json

import pytest
import torch
from model_helpers import perturbed_model

from midirwkv.config import ModelConfig
from midirwkv.errors import CheckpointError
from midirwkv.files import FILE_MODE
from midirwkv.model import (
    apply_lora,
    export_rwkv_pth,
    import_rwkv_pth,
    load_checkpoint,
    model_from_rwkv_pth,
    save_checkpoint,
)

TINY = ModelConfig(vocab_size=100, n_layer=2, n_embd=64, head_size=32, decay_lora=8, aaa_lora=8, mv_lora=8,
                   gate_lora=16)


def tiny_model(seed=0, cfg=TINY):
    return perturbed_model(cfg, seed)


@pytest.fixture
def tokenizer(tmp_path):
    path = tmp_path / "tok.json"
    path.write_text(json.dumps({"vocab": {"PAD_None": 0}}))
    return path


def test_folder_round_trip(tmp_path, tokenizer):
    m = tiny_model()
    out = save_checkpoint(tmp_path / "ckpt", m, tokenizer, {"step": 12, "loss": 1.5})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "meta.json", "model.safetensors", "tokenizer.json"]
    m2, tok, meta = load_checkpoint(out)
    assert meta == {"step": 12, "loss": 1.5}
    assert tok.read_text() == tokenizer.read_text()
    assert m2.cfg == TINY and not m2.training
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    # overwrite in place, no temp folders left behind
    save_checkpoint(out, tiny_model(1), tokenizer, {"step": 13})
    assert load_checkpoint(out)[2] == {"step": 13}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert (out / "model.safetensors").stat().st_mode & 0o777 == FILE_MODE   # safetensors alone writes 0600


def test_folder_keeps_lora_and_tuned_state(tmp_path, tokenizer):
    m = tiny_model()
    apply_lora(m, rank=2, alpha=4, targets=("att.value",))
    m.enable_state_tuning(freeze=False)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01)
    save_checkpoint(tmp_path / "c", m, tokenizer, {})
    m2, _, _ = load_checkpoint(tmp_path / "c")
    idx = torch.randint(0, 100, (1, 7))
    assert m2.state_tuning
    assert torch.allclose(m2(idx), m(idx))


def test_damaged_folders(tmp_path, tokenizer):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="tokenizer"):
        save_checkpoint(tmp_path / "c", tiny_model(), tmp_path / "missing.json", {})
    d = save_checkpoint(tmp_path / "c", tiny_model(), tokenizer, {})
    (d / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="meta.json"):
        load_checkpoint(d)
    d = save_checkpoint(tmp_path / "c", tiny_model(), tokenizer, {})
    (d / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="JSON"):
        load_checkpoint(d)
    d = save_checkpoint(tmp_path / "c", tiny_model(), tokenizer, {})
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(d)
    d = save_checkpoint(tmp_path / "c", tiny_model(), tokenizer, {})
    (d / "config.json").write_text(json.dumps({**TINY.to_dict(), "n_embd": 96}))
    with pytest.raises(CheckpointError, match="shape mismatch") as info:
        load_checkpoint(d)
    assert "Fix:" in str(info.value)
    (d / "config.json").write_text(json.dumps({**TINY.to_dict(), "colour": 1}))
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(d)


def test_rwkv_pth_round_trip(tmp_path):
    cfg = ModelConfig(vocab_size=100, n_layer=3, n_embd=64, head_size=16, dim_ffn=192, decay_lora=8, aaa_lora=16,
                      mv_lora=8, gate_lora=32)
    m = tiny_model(cfg=cfg)
    path = export_rwkv_pth(m, tmp_path / "m.pth")
    cfg2, sd = import_rwkv_pth(path)
    assert cfg2 == cfg
    for k, v in m.state_dict().items():
        assert torch.equal(sd[k], v)
    idx = torch.randint(0, 100, (1, 9))
    assert torch.equal(model_from_rwkv_pth(path)(idx), m(idx))


def test_rwkv_pth_squeezed_bf16_and_no_layer0_value_residual(tmp_path):
    """Official files: bf16, and tools that squeeze vectors or drop layer 0's unused v0/v1/v2."""
    m = tiny_model()
    sd = {k: v.squeeze().to(torch.bfloat16) for k, v in m.state_dict().items()
          if not k.startswith(("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"))}
    torch.save(sd, tmp_path / "x.pth")
    cfg, out = import_rwkv_pth(tmp_path / "x.pth")
    assert cfg == TINY
    assert out["blocks.1.att.x_r"].shape == (1, 1, 64) and out["blocks.0.att.v1"].shape == (64, 8)


def test_rwkv_pth_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        import_rwkv_pth(tmp_path / "none.pth")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="x070"):
        import_rwkv_pth(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="weights-only"):
        import_rwkv_pth(tmp_path / "junk.pth")


def test_split_weights_round_trip_bit_exactly(tmp_path, tokenizer):
    """fp16 weights split into files of bounded size load, join and split again bit for bit."""
    from midirwkv.model.checkpoint import SHARD_NAME, join_weights, read_weights, weight_files

    m = tiny_model(cfg=ModelConfig(vocab_size=500, n_layer=2, n_embd=64, head_size=32, decay_lora=8, aaa_lora=8,
                                   mv_lora=8, gate_lora=16))
    limit = 200 * 1024
    out = save_checkpoint(tmp_path / "split", m, tokenizer, {"step": 1}, dtype=torch.float16, shard_bytes=limit)
    parts = weight_files(out)
    assert len(parts) > 2 and not (out / "model.safetensors").exists()
    assert [p.name for p in parts] == [SHARD_NAME.format(index=i, count=len(parts)) for i in range(1, len(parts) + 1)]
    assert all(p.stat().st_size <= limit for p in parts)
    tensors, _ = read_weights(out)
    want = {k: v.to(torch.float16) for k, v in m.state_dict().items()}
    assert tensors.keys() == want.keys()
    assert all(t.dtype == torch.float16 and torch.equal(t.view(torch.int16), want[k].view(torch.int16))
               for k, t in tensors.items())
    m2, _, meta = load_checkpoint(out)                          # joined on load, cast back to float32
    assert meta == {"step": 1}
    assert all(torch.equal(v, want[k].float()) for k, v in m2.state_dict().items())
    joined = join_weights(out, tmp_path / "joined.safetensors")
    one = save_checkpoint(tmp_path / "one", m, tokenizer, {}, dtype=torch.float16)
    assert joined.read_bytes() == (one / "model.safetensors").read_bytes()
    again = save_checkpoint(tmp_path / "again", m2, tokenizer, {"step": 1}, dtype=torch.float16, shard_bytes=limit)
    assert [p.read_bytes() for p in weight_files(again)] == [p.read_bytes() for p in parts]
    parts[-1].unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(out)
    save_checkpoint(tmp_path / "both", m, tokenizer, {}, shard_bytes=limit)
    (tmp_path / "both" / "model.safetensors").write_bytes((one / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="both"):
        load_checkpoint(tmp_path / "both")
