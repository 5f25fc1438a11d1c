"""The Transformer baseline: a GPT-2 of the same width, depth and vocabulary as an RWKV-7 config.

Only for the evaluation's baseline (issue 6, the paper's "Bar Fill" Transformer). It trains in the same loop,
on the same samples, as the RWKV-7 model (``TrainConfig.arch = "gpt2"``), and saves to the same kind of
folder (``model.safetensors``, ``config.json`` with ``"arch": "gpt2"``, ``tokenizer.json``, ``meta.json``).
Needs HF ``transformers`` (the ``baseline`` extra).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from torch import Tensor, nn

from midirwkv.config import ModelConfig
from midirwkv.errors import BadRequestError, CheckpointError
from midirwkv.files import atomic_folder, save_safetensors

ARCH = "gpt2"
_CACHE_ARG = "past_key_values"


def _transformers():
    try:
        import transformers
    except ImportError as exc:   # pragma: no cover - exercised only without the extra
        raise BadRequestError("the Transformer baseline needs HF transformers", argument="arch", value=ARCH,
                              fix="pip install 'midirwkv[baseline]'") from exc
    return transformers


def _cache_argument() -> str:
    """The name transformers gives the KV-cache argument: ``cache`` from 5.x, ``past_key_values`` before."""
    import inspect

    params = inspect.signature(_transformers().GPT2LMHeadModel.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class GPT2Baseline(nn.Module):
    """GPT-2 (learned positions, pre-LN, GELU MLP of ``ffn_width``) sized by a :class:`ModelConfig`.

    ``forward(idx)`` returns logits ``(B, T, vocab)`` like :class:`RWKV7`; prompts are limited to
    ``n_positions`` tokens (the training context), which is the Transformer's limit the RWKV model lacks.
    """

    def __init__(self, cfg: ModelConfig, n_positions: int):
        super().__init__()
        tf = _transformers()
        self.cfg, self.n_positions = cfg, int(n_positions)
        hf_cfg = tf.GPT2Config(vocab_size=cfg.vocab_size, n_positions=self.n_positions, n_embd=cfg.n_embd,
                               n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.ffn_width,
                               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
                               bos_token_id=0, eos_token_id=0, pad_token_id=0)
        self.net = tf.GPT2LMHeadModel(hf_cfg)
        global _CACHE_ARG
        _CACHE_ARG = _cache_argument()

    def forward(self, idx: Tensor, past_key_values=None, use_cache: bool = False):
        if idx.shape[1] > self.n_positions and past_key_values is None:
            raise BadRequestError("the prompt is longer than the Transformer's context", argument="idx",
                                  value=idx.shape[1], fix=f"use at most {self.n_positions} tokens")
        kwargs = {_CACHE_ARG: past_key_values} if past_key_values is not None else {}
        out = self.net(input_ids=idx, use_cache=use_cache, **kwargs)
        if not use_cache:
            return out.logits
        return out.logits, getattr(out, "cache" if _CACHE_ARG == "cache" else "past_key_values")

    def config_dict(self) -> dict:
        return {"arch": ARCH, "n_positions": self.n_positions, **self.cfg.to_dict()}


def save_baseline(dir: str | Path, model: GPT2Baseline, tokenizer_json_path: str | Path, meta: dict | None = None) -> Path:
    """Write the baseline's folder atomically (a temporary sibling renamed into place)."""
    with atomic_folder(dir) as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
        save_safetensors(tensors, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(model.config_dict(), indent=2))
        shutil.copyfile(tokenizer_json_path, tmp / "tokenizer.json")
        (tmp / "meta.json").write_text(json.dumps(meta or {}, indent=2, default=str))
    return Path(dir)


def load_baseline(dir: str | Path) -> tuple[GPT2Baseline, Path, dict]:
    """Load a folder written by :func:`save_baseline` -> (model in eval mode, tokenizer path, meta)."""
    from safetensors.torch import load_file

    dir = Path(dir)
    try:
        raw = json.loads((dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read the baseline's config ({exc})", argument="model", value=str(dir),
                              fix="pass a folder written by `midirwkv train --arch gpt2`") from exc
    if raw.pop("arch", None) != ARCH:
        raise CheckpointError("not a GPT-2 baseline folder", argument="model", value=str(dir),
                              fix="pass a folder whose config.json says \"arch\": \"gpt2\"")
    n_positions = int(raw.pop("n_positions"))
    model = GPT2Baseline(ModelConfig.from_dict(raw), n_positions)
    model.net.load_state_dict(load_file(str(dir / "model.safetensors")), strict=False)
    meta = json.loads((dir / "meta.json").read_text()) if (dir / "meta.json").is_file() else {}
    return model.eval(), dir / "tokenizer.json", meta


def is_baseline_dir(dir: str | Path) -> bool:
    """True when ``dir/config.json`` names the GPT-2 baseline."""
    try:
        return json.loads((Path(dir) / "config.json").read_text()).get("arch") == ARCH
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
