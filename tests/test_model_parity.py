"""Parity with the official ``rwkv`` package (RWKV_x070, 'cpu fp32') on an exported random model."""

import importlib.util
import os

import pytest
import torch

from midirwkv.config import ModelConfig
from midirwkv.model import RWKV7, export_rwkv_pth

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("rwkv") is None, reason="the rwkv package is not installed"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # the rwkv package uses torch.jit.script
]

TINY = ModelConfig(vocab_size=100, n_layer=2, n_embd=64, head_size=32, decay_lora=8, aaa_lora=8, mv_lora=8,
                   gate_lora=16)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """Our random tiny model and the same weights loaded by rwkv.model.RWKV (x070 mode)."""
    with pytest.MonkeyPatch.context() as env:     # read by the rwkv package at import time, restored after
        env.setenv("RWKV_V7_ON", "1")
        env.setenv("RWKV_JIT_ON", os.environ.get("RWKV_JIT_ON", "0"))
        from rwkv.model import RWKV

    if RWKV.__name__ != "RWKV_x070":
        pytest.skip("rwkv was imported before RWKV_V7_ON=1 was set; run this file on its own")
    torch.manual_seed(0)
    model = RWKV7(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = export_rwkv_pth(model, tmp_path_factory.mktemp("pth") / "tiny.pth")
    return model.eval(), RWKV(str(path)[: -len(".pth")], "cpu fp32")


def test_sequence_mode_matches(official):
    model, ref = official
    ids = torch.randint(0, 100, (300,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        theirs, _ = ref.forward(ids, None, full_output=True)
        ours = model(torch.tensor([ids]))[0]
    assert (theirs - ours).abs().max().item() < 1e-4


def test_token_by_token_matches(official):
    model, ref = official
    ids = torch.randint(0, 100, (200,), generator=torch.Generator().manual_seed(2)).tolist()
    state_ref, state = None, model.init_state(1)
    worst = 0.0
    with torch.no_grad():
        for i in ids:
            theirs, state_ref = ref.forward([i], state_ref)
            ours, state = model.step(torch.tensor([i]), state)
            worst = max(worst, (theirs - ours[0]).abs().max().item())
        # the official state list is [att_x, wkv, ffn_x] per layer, wkv [head, value, key] like ours
        for layer in range(TINY.n_layer):
            assert (state_ref[3 * layer + 1] - state.wkv[layer, 0]).abs().max().item() < 1e-4
            assert (state_ref[3 * layer] - state.att_x[layer, 0]).abs().max().item() < 1e-5
    assert worst < 1e-4
