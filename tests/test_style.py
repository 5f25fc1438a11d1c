"""Style adaptation: state tuning and LoRA on a few songs, style files, blends, export, CLI round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from midirwkv import cli
from midirwkv.config import ModelConfig, StyleConfig
from midirwkv.errors import BadRequestError, CheckpointError, DataError
from midirwkv.files import FILE_MODE
from midirwkv.infer import style as istyle
from midirwkv.infer.session import prefill
from midirwkv.model.checkpoint import load_checkpoint, save_checkpoint
from midirwkv.model.lora import load_adapter, merge_lora
from midirwkv.model.rwkv7 import RWKV7
from midirwkv.model.wkv import wkv_step
from midirwkv.music.vocab import Vocab
from midirwkv.train.style import load_songs, tune_lora, tune_state

FIXTURES = Path(__file__).parent / "fixtures"
SONGS = FIXTURES / "pop909"            # 3 POP909 songs (MIT)
TOKENIZER = Path(__file__).parents[1] / "src" / "midirwkv" / "assets" / "tokenizer" / "tokenizer.json"


def tiny_model(n_layer: int = 2, n_embd: int = 32, seed: int = 0) -> RWKV7:
    """A tiny random model whose outputs depend on the WKV state (output projections are not zero)."""
    torch.manual_seed(seed)
    vocab = Vocab.load()
    model = RWKV7(ModelConfig(vocab_size=vocab.size, n_layer=n_layer, n_embd=n_embd, head_size=16, decay_lora=8,
                              aaa_lora=8, mv_lora=8, gate_lora=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("att.output.weight", "ffn.value.weight")):
                p.normal_(0, 0.2)
            elif name == "emb.weight" or name.endswith(".g1"):
                p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("style") / "tiny"
    save_checkpoint(folder, tiny_model(), TOKENIZER, {})
    return folder


def quick(**kw) -> StyleConfig:
    base = {"epochs": 2, "ctx_len": 192, "meter": "4/4", "progress": False, "micro_batch": 2, "seed": 0}
    return StyleConfig(**{**base, **kw})


def fixed_samples(vocab, folder: Path, n: int = 2, ctx_len: int = 192) -> list:
    from midirwkv.music.examples import build_sample
    from midirwkv.train.batches import SpanCollator

    songs, _, _ = load_songs(folder, vocab, quick())
    samples = [build_sample(s.tokens, vocab, np.random.default_rng([5, i, k]), ctx_len=ctx_len, augment_data=False)
               for i, s in enumerate(songs) for k in range(n)]
    return [SpanCollator(vocab.pad)(samples[i:i + 2]) for i in range(0, len(samples), 2)]


def mean_loss(model, batches) -> float:
    from midirwkv.train.batches import masked_losses

    total = count = 0.0
    with torch.no_grad():
        for b in batches:
            loss, _ = masked_losses(model(b.input_ids), b)
            total += float(loss)
            count += float(b.loss_mask.sum())
    return total / count


# ----------------------------------------------------------------------------------------------- state tuning

def test_state_tuning_changes_only_the_state(ckpt, tmp_path):
    base, _, _ = load_checkpoint(ckpt)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    out = tmp_path / "style.safetensors"
    result = tune_state(SONGS, out, model=ckpt, cfg=quick(val_fraction=0.34))
    after = result.model.state_dict()
    assert set(after) - set(before) == {f"blocks.{i}.att.time_state" for i in range(2)}
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert result.model.tuned_state().abs().sum() > 0
    assert result.n_params == 2 * 2 * 16 * 16
    assert len(result.train_songs) == 2 and len(result.valid_songs) == 1
    assert len(result.val_loss) == result.epochs_run + 1 and result.tokens > 0 and result.elapsed_s > 0
    sf = istyle.read_style(out)
    assert torch.allclose(sf.state, result.model.tuned_state())
    assert sf.meta["settings"]["peak_lr"] == 5e-2 and sf.meta["songs"]["valid"] == result.valid_songs
    assert sf.meta["losses"]["val_loss"] == pytest.approx(result.val_loss)
    istyle.check_style(sf, base, Vocab.load(ckpt / "tokenizer.json"))


def test_tuned_state_lowers_training_loss(ckpt, tmp_path):
    base, tok, _ = load_checkpoint(ckpt)
    vocab = Vocab.load(tok)
    batches = fixed_samples(vocab, SONGS)
    result = tune_state(SONGS, tmp_path / "s.safetensors", model=ckpt,
                        cfg=quick(epochs=6, val_fraction=0.0, augment=False, samples_per_song=2))
    assert mean_loss(result.model, batches) < mean_loss(base, batches) - 1e-3


def test_early_stopping_keeps_the_best_epoch(ckpt, tmp_path):
    # a huge learning rate makes validation worse after the first steps: training stops and keeps epoch 0
    result = tune_state(SONGS, tmp_path / "s.safetensors", model=ckpt,
                        cfg=quick(epochs=6, lr=500.0, val_fraction=0.34, patience=1))
    assert result.stopped_early and result.epochs_run < 6
    best = result.best_epoch
    assert result.val_loss[best] == min(result.val_loss)
    if best == 0:
        assert result.model.tuned_state().abs().sum() == 0


# ----------------------------------------------------------------------------------------------- blends

def test_blend_equals_the_weighted_state(ckpt, tmp_path):
    model, tok, _ = load_checkpoint(ckpt)
    vocab = Vocab.load(tok)
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(2, 2, 16, 16, generator=g) * 0.5 for _ in range(2))
    pa = istyle.save_style(tmp_path / "a.safetensors", a, model, vocab)
    assert pa.stat().st_mode & 0o777 == FILE_MODE                      # not mkstemp's 0600
    pb = istyle.save_style(tmp_path / "b.safetensors", b, model, vocab)
    state = istyle.style_state(model, vocab, [(pa, 0.3), (pb, 0.7)])
    assert torch.allclose(state.wkv[:, 0], 0.3 * a + 0.7 * b, atol=1e-6)
    assert torch.equal(state.att_x, torch.zeros_like(state.att_x))
    one = istyle.style_state(model, vocab, pa)
    assert torch.allclose(one.wkv[:, 0], a)
    # reading a prompt from the blend is reading it with the weighted state as the model's learned state
    ids = [vocab.bos, vocab.track_start, vocab.bar]
    tuned = load_checkpoint(ckpt)[0]
    tuned.enable_state_tuning(init=0.3 * a + 0.7 * b)
    assert torch.allclose(prefill(model, ids, init_state=state).wkv, prefill(tuned, ids).wkv, atol=1e-5)
    assert not torch.allclose(prefill(model, ids).wkv, prefill(tuned, ids).wkv, atol=1e-3)


def test_infill_with_style_starts_from_the_state(ckpt, tmp_path, monkeypatch):
    from midirwkv.infer import api, pipeline

    engine = api.load_engine(ckpt, threads=1)
    a = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(3))
    path = istyle.save_style(tmp_path / "a.safetensors", a, engine.model, engine.vocab)
    seen = []
    real = pipeline.InfillSession

    def spy(*args, **kwargs):
        seen.append(kwargs.get("init_state"))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "InfillSession", spy)
    song = SONGS / "318.mid"
    kwargs = {"track": 0, "bars": "5-5", "seed": 4, "engine": engine, "context": 2}
    _, report = api.infill(song, **kwargs)
    styled, _ = api.infill(song, style=path, **kwargs)
    blended, _ = api.infill(song, style=[(path, 1.0)], **kwargs)
    assert seen[0] is None
    assert torch.allclose(seen[1].wkv[:, 0], a) and torch.allclose(seen[2].wkv[:, 0], a)
    assert styled.dumps_midi() == blended.dumps_midi()              # same state, same seed: same result
    assert report.variations[0].spans[0].sampled_tokens > 0


# ----------------------------------------------------------------------------------------------- export

def test_export_layout_is_rwkv_peft(ckpt, tmp_path):
    model, tok, _ = load_checkpoint(ckpt)
    vocab = Vocab.load(tok)
    state = torch.randn(2, 2, 16, 16)
    path = istyle.save_style(tmp_path / "s.safetensors", state, model, vocab)
    pth = istyle.export_state(path, tmp_path / "s.pth")
    loaded = torch.load(pth, weights_only=True)
    assert sorted(loaded) == ["blocks.0.att.time_state", "blocks.1.att.time_state"]
    for i in range(2):
        assert loaded[f"blocks.{i}.att.time_state"].shape == (2, 16, 16)          # (H, N, N)
        assert torch.equal(loaded[f"blocks.{i}.att.time_state"], state[i])
    # a plain key copy into the model (what RWKV-PEFT's state merge does) gives the same learned state
    model.enable_state_tuning(freeze=True)
    model.load_state_dict(loaded, strict=False)
    assert torch.equal(model.tuned_state(), state)
    st = istyle.export_state(path, tmp_path / "s2.safetensors")
    assert st.is_file()
    with pytest.raises(BadRequestError):
        istyle.export_state(path, tmp_path / "s.bin")


def test_state_layout_is_head_value_key():
    # one stored entry S[h, value=i, key=j]: reading with r = e_j writes output channel i (y = S r)
    S = torch.zeros(1, 1, 4, 4)
    S[0, 0, 2, 1] = 1.0
    r = torch.zeros(1, 1, 4)
    r[0, 0, 1] = 1.0
    zero = torch.zeros(1, 1, 4)
    y, _ = wkv_step(r, zero, zero, zero, zero, zero, S)
    assert y[0, 0].tolist() == [0.0, 0.0, 1.0, 0.0]


# ----------------------------------------------------------------------------------------------- LoRA

def test_lora_changes_only_lora_and_merges(ckpt, tmp_path):
    base, tok, _ = load_checkpoint(ckpt)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    out = tmp_path / "lora.safetensors"
    result = tune_lora(SONGS, out, model=ckpt, cfg=quick(lr=1e-2, lora_rank=4, val_fraction=0.34),
                       merged_out=tmp_path / "merged")
    after = result.model.state_dict()
    extra = set(after) - set(before)
    assert extra and all(k.endswith((".lora_A", ".lora_B")) for k in extra)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert any(after[k].abs().sum() > 0 for k in extra if k.endswith(".lora_B"))
    assert result.n_params == sum(after[k].numel() for k in extra)
    ids = torch.tensor([[1, 5, 9, 40, 7, 3]])
    with torch.no_grad():
        want = result.model(ids)
        fresh = load_adapter(load_checkpoint(ckpt)[0], out)
        assert torch.allclose(fresh(ids), want, atol=1e-5)
        assert torch.allclose(merge_lora(fresh)(ids), want, atol=1e-4)
        merged, _, _ = load_checkpoint(tmp_path / "merged")
        assert torch.allclose(merged(ids), want, atol=1e-4)
        run_model, init = istyle.resolve_style(base, Vocab.load(tok), out)
        assert init is None and torch.allclose(run_model(ids), want, atol=1e-4)
    assert torch.equal(base.state_dict()["blocks.0.att.key.weight"], before["blocks.0.att.key.weight"])
    with pytest.raises(BadRequestError):
        istyle.resolve_style(base, Vocab.load(tok), [(out, 0.5), (out, 0.5)])


# ----------------------------------------------------------------------------------------------- errors

def test_bad_song_folders(ckpt, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no MIDI files"):
        tune_state(empty, tmp_path / "s.safetensors", model=ckpt, cfg=quick())
    with pytest.raises(DataError, match="not found"):
        tune_state(tmp_path / "missing", tmp_path / "s.safetensors", model=ckpt, cfg=quick())
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.mid").write_bytes(b"<html>not midi</html>")
    (junk / "b.mid").write_bytes(b"MThd\x00")
    with pytest.raises(DataError, match="could be read"):
        tune_state(junk, tmp_path / "s.safetensors", model=ckpt, cfg=quick())
    short = tmp_path / "short"
    short.mkdir()
    import symusic

    score = symusic.Score(480)
    track = symusic.Track(program=0)
    track.notes.append(symusic.Note(0, 480, 60, 80))
    score.tracks.append(track)
    score.dump_midi(str(short / "one_bar.mid"))
    with pytest.raises(DataError, match="too short"):
        tune_state(short, tmp_path / "s.safetensors", model=ckpt, cfg=quick())
    assert not (tmp_path / "s.safetensors").exists()


def test_style_file_from_another_model_or_tokenizer(ckpt, tmp_path):
    model, tok, _ = load_checkpoint(ckpt)
    vocab = Vocab.load(tok)
    other = tiny_model(n_layer=3)
    path = istyle.save_style(tmp_path / "other.safetensors", torch.zeros(3, 2, 16, 16), other, vocab)
    with pytest.raises(CheckpointError, match="another model shape"):
        istyle.style_state(model, vocab, path)
    same_shape = tiny_model(seed=9)
    path = istyle.save_style(tmp_path / "weights.safetensors", torch.zeros(2, 2, 16, 16), same_shape, vocab)
    with pytest.raises(CheckpointError, match="other weights"):
        istyle.style_state(model, vocab, path)
    assert istyle.style_state(model, vocab, path, check_weights=False) is not None
    good = istyle.save_style(tmp_path / "good.safetensors", torch.zeros(2, 2, 16, 16), model, vocab)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["tokenizer_hash"] = "0" * 40
    save_file(tensors, str(tmp_path / "tok.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="another tokenizer"):
        istyle.style_state(model, vocab, tmp_path / "tok.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        istyle.style_state(model, vocab, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        istyle.resolve_style(model, vocab, tmp_path / "nope.safetensors")


def test_blend_weights_are_checked(tmp_path):
    with pytest.raises(BadRequestError, match="sum to 1"):
        istyle.parse_style([("a", 0.5), ("b", 0.6)])
    with pytest.raises(BadRequestError, match=">= 0"):
        istyle.parse_style([("a", 1.5), ("b", -0.5)])
    with pytest.raises(BadRequestError):
        istyle.parse_style([("a", "x"), ("b", 1.0)])
    assert istyle.parse_style(None) == []
    assert istyle.parse_style("a.safetensors") == [(Path("a.safetensors"), 1.0)]
    assert istyle.parse_style_args(["a.safetensors"]) == [("a.safetensors", 1.0)]
    assert istyle.parse_style_args(["a.s:0.25", "b.s:0.75"]) == [("a.s", 0.25), ("b.s", 0.75)]
    with pytest.raises(BadRequestError, match="needs a weight"):
        istyle.parse_style_args(["a.s", "b.s:1"])
    with pytest.raises(BadRequestError):
        StyleConfig(meter="4/3")
    with pytest.raises(BadRequestError):
        StyleConfig(method="full")


# ----------------------------------------------------------------------------------------------- CLI

def test_cli_round_trip(ckpt, tmp_path, capsys):
    out = tmp_path / "pop.safetensors"
    code = cli.main(["tune-state", "--data", str(SONGS), "--out", str(out), "--model", str(ckpt), "--epochs", "1",
                     "--ctx-len", "192", "--meter", "4/4", "--threads", "1", "--export", str(tmp_path / "pop.pth"),
                     "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["method"] == "state" and summary["epochs_run"] == 1
    assert "tokens/s" in captured.err and "run time" in captured.err
    assert out.is_file() and (tmp_path / "pop.pth").is_file()
    fill = tmp_path / "fill.mid"
    code = cli.main(["infill", str(SONGS / "318.mid"), "--track", "0", "--bars", "5-6", "--context", "2",
                     "--model", str(ckpt), "--style", f"{out}:0.5", "--style", f"{out}:0.5", "--seed", "1",
                     "-o", str(fill), "--threads", "1", "-q"])
    assert code == 0, capsys.readouterr().err
    assert fill.is_file()
    code = cli.main(["infill", str(SONGS / "318.mid"), "--track", "0", "--bars", "5-6", "--model", str(ckpt),
                     "--style", f"{out}:0.5", "--style", f"{out}:0.6", "-o", str(tmp_path / "x.mid"), "-q"])
    assert code == 2 and "sum to 1" in capsys.readouterr().err
    code = cli.main(["tune-state", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "n.safetensors"),
                     "--model", str(ckpt), "-q"])
    assert code == 2 and "not found" in capsys.readouterr().err
