"""Publish a trained run as the bundled default model, with its model card.

``python -m midirwkv.train.card RUN_DIR [--out src/midirwkv/assets/default_model] [--notes NOTES.md]``

Copies ``RUN_DIR/final`` (weights, config, tokenizer, meta) into ``--out``, draws the validation curve from
``RUN_DIR/train_log.csv`` and writes ``MODEL_CARD.md`` from the numbers the run recorded. ``RUN_DIR`` may be the
folder a device run returned (``midirwkv.train.device``): its split weights are joined into one file, and the
card records the device run (hardware, minutes, tokens, tokens/s, model FLOP utilisation). A model already in
``--out`` is replaced only when the new one is measurably better: a lower validation loss with the same
tokenizer (pass ``--force`` to replace it anyway, e.g. after a tokenizer change, and say why in the notes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from midirwkv.errors import BadRequestError, CheckpointError, MidiRwkvError
from midirwkv.files import atomic_folder

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "assets" / "default_model"
MAX_BYTES = 50 * 1024 * 1024
FILES = ("model.safetensors", "config.json", "tokenizer.json", "meta.json")

LICENCES = {
    "ultimate-midi-scraper": "rp-bot/Ultimate-MIDI-Scraper: no licence stated for the music (research use; files "
                             "not redistributed, only weights trained on them)",
    "midi-archive": "reubenson/midi-archive: code MIT, files third-party (research use)",
    "midi-archives-jazz-etc": "bsubedi26/midi-archives: code MIT, files third-party (research use)",
    "pop909": "POP909: MIT",
    "nottingham": "Nottingham (jukedeck): GPL-3",
}


def _sha(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def portable_paths(value: object, root: Path | None = None) -> object:
    """``value`` with every absolute path string made relative to ``root`` (the working folder by default).

    A published card and meta.json travel with the repository; the machine a run was trained on does not.
    Paths above ``root`` become ``../...``; strings that are not absolute paths are left alone.
    """
    import os

    root = Path.cwd() if root is None else Path(root)
    if isinstance(value, dict):
        return {k: portable_paths(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_paths(v, root) for v in value]
    if isinstance(value, str) and value.startswith("/") and "\n" not in value:
        return Path(os.path.relpath(value, root)).as_posix()
    return value


def _meta(folder: Path) -> dict:
    try:
        return json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read meta.json ({exc})", argument="run_dir", value=str(folder),
                              fix="pass a run folder whose training finished (it holds final/meta.json)") from exc


def _last_val(meta: dict) -> tuple[float | None, float | None]:
    curve = meta.get("val_curve") or []
    if not curve:
        return None, None
    return curve[-1]["val_loss"], curve[-1]["val_span_loss"]


def _params(folder: Path) -> int:
    return sum(n for n, _ in _tensor_sizes(folder))


def _tensor_sizes(folder: Path) -> list[tuple[int, str]]:
    """(elements, dtype) of every tensor in the checkpoint's weights (split or not)."""
    from safetensors import safe_open

    from midirwkv.model.checkpoint import weight_files

    out = []
    for path in weight_files(folder):
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 (safetensors handles are not dicts)
                sl = fh.get_slice(name)
                n = 1
                for d in sl.get_shape():
                    n *= d
                out.append((n, sl.get_dtype()))
    return out


def _weights_dtype(folder: Path) -> str:
    """How the weights are stored, e.g. ``fp32`` or ``fp16`` (the dtype holding most elements)."""
    counts: dict[str, int] = {}
    for n, dtype in _tensor_sizes(folder):
        counts[dtype] = counts.get(dtype, 0) + n
    name = max(counts, key=counts.__getitem__) if counts else "?"
    return {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}.get(name, name.lower())


def _source_licences(sources: Sequence[str]) -> list[str]:
    out = []
    for src in sources:
        name = Path(str(src).split("::")[0]).name
        match = next((text for key, text in LICENCES.items() if name.startswith(key)), "licence: see the source")
        out.append(f"- `{name}`: {match}")
    return out


def lineage(meta: dict) -> list[dict]:
    """The runs that made a model, oldest first: each run's meta, following ``init_meta`` back."""
    chain, m = [], meta
    while m:
        chain.append(m)
        m = m.get("init_meta")
    return chain[::-1]


def combine_logs(previous: Path | None, current: Path, out: Path) -> Path:
    """Write ``out``: the previous model's log (already cumulative) then ``current``'s rows, whose step, token
    and time columns continue from the previous log's last row; just ``current`` without a previous log."""
    import csv

    rows: list[dict] = []
    header: list[str] = []
    offset = {"step": 0.0, "tokens": 0.0, "elapsed_s": 0.0}
    if previous is not None and previous.is_file():
        with open(previous, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        if rows:
            offset = {k: float(rows[-1].get(k) or 0) for k in offset}
    with open(current, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = header or list(reader.fieldnames or [])
        for row in reader:
            for k, base in offset.items():
                if row.get(k) not in (None, ""):
                    v = float(row[k]) + base
                    row[k] = str(int(v)) if k != "elapsed_s" else f"{v:.3f}"
            rows.append(row)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return out


def _cpu_minutes(run: dict) -> float | None:
    """CPU minutes of one run: as the trainer measured them, or, for runs logged before it did, wall time x the
    number of threads (an upper bound); None when neither is known."""
    if run.get("cpu_s") is not None:
        return run["cpu_s"] / 60
    threads = (run.get("train_config") or {}).get("threads")
    return (run.get("elapsed_s") or 0) * threads / 60 if threads else None


def _cpu_text(run: dict) -> str:
    cpu = _cpu_minutes(run)
    if cpu is None:
        return "CPU time not recorded"
    return f"{cpu:.1f} CPU-min" + ("" if run.get("cpu_s") is not None else " (wall time x threads)")


def _device_text(run: dict) -> str:
    """A device run in words: hardware, minutes, tokens, tokens/s and model FLOP utilisation, as recorded."""
    d = run["device"]
    where = f"one {d.get('name', '?')}" + (" GPU" if d.get("kind") == "cuda" else f" ({d.get('kind')})")
    peak = d.get("peak_flops") or 0
    peak_text = f"{peak / 1e12:.1f} TFLOP/s" if peak >= 1e12 else f"{peak / 1e9:.1f} GFLOP/s"
    precision = "bf16 autocast" if d.get("autocast") == "bf16" else "float32"
    return (f"{(run.get('elapsed_s') or 0) / 60:.1f} min of training on {where} ({d.get('wall_s', 0) / 60:.1f} min "
            f"for the whole command of a {d.get('minutes_budget')}-minute budget), {precision}, "
            f"WKV kernel {d.get('kernel')}, batch {d.get('micro_batch')}: {d.get('tokens_per_s', 0):,.0f} tokens/s, "
            f"model FLOP utilisation {d.get('mfu', 0):.1%} of a measured {peak_text} ({d.get('peak_measured')})")


def _training_lines(meta: dict, tcfg: dict) -> list[str]:
    runs = lineage(meta)
    where = (_device_text(meta) if meta.get("device") else
             f"{meta.get('elapsed_s', 0) / 60:.1f} min on {tcfg.get('threads') or 'all'} CPU thread(s) of a 2-core "
             f"machine, {_cpu_text(meta)}")
    lines = [
        f"- Steps: {meta.get('steps')}; tokens seen: {meta.get('tokens_seen'):,}; training: {where}"
        + (" (this run)." if len(runs) > 1 else "."),
        f"- Context {tcfg.get('ctx_len')} tokens, {tcfg.get('micro_batch')} x {tcfg.get('grad_accum')} sequences per "
        f"step, AdamW lr {tcfg.get('lr')} (warm-up {tcfg.get('warmup_steps')} steps, cosine to "
        f"{tcfg.get('lr_floor')}), betas {tcfg.get('betas')}, weight decay {tcfg.get('weight_decay')} on matrices, "
        f"grad clip {tcfg.get('grad_clip')}, track-infilling samples p={tcfg.get('p_track')}, pitch/velocity "
        f"augmentation {'on' if tcfg.get('augment') else 'off'}, seed {tcfg.get('seed')}, "
        f"prompt layout {tcfg.get('prompt_layout', 'file_order')}, span loss weight {tcfg.get('span_weight', 1.0)}.",
        f"- Started from: {meta.get('init_from') or 'random initialisation'}"
        + (f", grown from {meta['grown_from_layers']} layers (new layers start as no-ops)."
           if meta.get("grown_from_layers") else "."),
    ]
    if meta.get("device"):
        d = meta["device"]
        sizes = "; ".join(f"{m['size']} {m['tokens_per_s']:,.0f} tokens/s" + ("" if m.get("fits", True) else
                                                                              f" ({m.get('note')})")
                          for m in d.get("measured") or [])
        pack = d.get("pack") or {}
        lines.append(f"- Device run: size {d.get('size')} ({d.get('params', 0) / 1e6:.2f} M parameters)"
                     + (f" picked from the measured {sizes}" if sizes else " as asked")
                     + f"; samples packed on the CPU: {pack.get('samples')} ({pack.get('share')}), "
                     f"{pack.get('passes')} passes over them.")
    if len(runs) > 1:
        tokens = sum(r.get("tokens_seen") or 0 for r in runs)
        steps = sum(r.get("steps") or 0 for r in runs)
        minutes = sum(r.get("elapsed_s") or 0 for r in runs) / 60
        cpus = [_cpu_minutes(r) for r in runs]
        known = [c for c in cpus if c is not None]
        cpu = f"{sum(known) / 60:.2f} CPU-hours" + ("" if len(known) == len(runs) else
                                                     f" in the {len(known)} runs that recorded it")
        lines.append(f"- In total over {len(runs)} runs, each starting from the model the one before published: "
                     f"{steps:,} steps, {tokens:,} tokens, {minutes:.1f} min of training wall time "
                     f"({minutes / 60:.2f} h), {cpu}; per run:")
        for i, r in enumerate(runs, 1):
            c = r.get("train_config") or {}
            last = (r.get("val_curve") or [{}])[-1]
            where = (_device_text(r) if r.get("device") else
                     f"{(r.get('elapsed_s') or 0) / 60:.1f} min on {c.get('threads') or 'all'} thread(s), "
                     f"{_cpu_text(r)}")
            lines.append(f"  {i}. {r.get('steps')} steps, {r.get('tokens_seen'):,} tokens, {where}, "
                         f"lr {c.get('lr')} -> {c.get('lr_floor')}, "
                         f"seed {c.get('seed')}, layout {c.get('prompt_layout', 'file_order')}"
                         + (f", grown from {r['grown_from_layers']} layers" if r.get("grown_from_layers") else "")
                         + "; validation loss at its end "
                         f"{last.get('val_loss', float('nan')):.4f}")
    return lines


def _train_commands(meta: dict, cfg: dict, vocab_size: int) -> list[str]:
    """The ``midirwkv train`` command of every run in the lineage, each continuing from the one before."""
    lines = []
    runs = lineage(meta)
    for i, r in enumerate(runs):
        t = r.get("train_config") or {}
        name = "runs/default" if i == 0 else f"runs/continued{i}"
        if r.get("device"):
            d = r["device"]
            dc = d.get("device_config") or {}
            lines.append(f"midirwkv pack-device --data cache/scraped -o device --ctx-len {t.get('ctx_len')} "
                         f"--seed {t.get('seed')}    # on this CPU; then, on the GPU machine:")
            lines.append(f"python -m midirwkv.train.device --pack device --out {name} --minutes {d.get('minutes_budget')} "
                         f"--size {d.get('size')} --lr {t.get('lr')} --lr-floor {t.get('lr_floor')} "
                         f"--warmup-steps {t.get('warmup_steps')} --micro-batch {d.get('micro_batch')} "
                         f"--seed {t.get('seed')}" + (" --start src/midirwkv/assets/default_model"
                                                       if r.get("init_from") else " --start none")
                         + (f" --kernel {dc['kernel']}" if dc.get("kernel", "chunked") != "chunked" else ""))
            if len(runs) > 1:
                lines.append(f"python -m midirwkv.train.card {name} --data cache/scraped"
                             + ("  # publishes it: the next run starts from it" if i < len(runs) - 1 else ""))
            continue
        if i == 0:
            start = (f"--tokenizer bpe{vocab_size}.json --layers {cfg['n_layer']} --width {cfg['n_embd']} "
                     f"--head-size {cfg['head_size']} --lora-dim {cfg['decay_lora']}")
        else:
            start = "--init-from src/midirwkv/assets/default_model"
            if r.get("grown_from_layers"):
                start += f" --layers {(t.get('model') or {}).get('n_layer', cfg['n_layer'])}"
        if "prompt_layout" in t:
            start += f" --prompt-layout {t['prompt_layout']} --span-weight {t.get('span_weight', 1.0)}"
        lines.append(f"midirwkv train --data cache/scraped -o {name} {start} --ctx-len {t.get('ctx_len')} "
                     f"--micro-batch {t.get('micro_batch')} --lr {t.get('lr')} --lr-floor {t.get('lr_floor')} "
                     f"--warmup-steps {t.get('warmup_steps')} --max-minutes {t.get('max_minutes')} "
                     f"--eval-every {t.get('eval_every')} --eval-batches {t.get('eval_batches')} "
                     f"--threads {t.get('threads')} --seed {t.get('seed')}")
        if len(runs) > 1:
            data = " --data cache/scraped" if i else ""
            lines.append(f"python -m midirwkv.train.card {name}{data}" + ("  # publishes it: the next run starts "
                                                                          "from it" if i < len(runs) - 1 else ""))
    return lines


def write_card(out: Path, meta: dict, params: int, notes: str = "") -> Path:
    """Write ``out/MODEL_CARD.md`` from a checkpoint's ``meta.json`` (numbers only as recorded)."""
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    tcfg = meta.get("train_config") or {}
    manifest = meta.get("data_manifest") or {}
    val, span = _last_val(meta)
    curve = meta.get("val_curve") or []
    best = min((c["val_loss"] for c in curve), default=None)
    from midirwkv.music.vocab import Vocab

    vocab = Vocab.load(out / "tokenizer.json")
    splits = manifest.get("per_split", {})
    lines = [
        "# midirwkv default model",
        "",
        f"RWKV-7 (x070), {cfg['n_layer']} layers x {cfg['n_embd']} wide, head size {cfg['head_size']}, "
        f"FFN {cfg.get('dim_ffn') or 4 * cfg['n_embd']}, low-rank dims {cfg['decay_lora']}/{cfg['aaa_lora']}/"
        f"{cfg['mv_lora']}/{cfg['gate_lora']}: {params / 1e6:.2f} M parameters, "
        f"{(out / 'model.safetensors').stat().st_size / 1e6:.1f} MB ({_weights_dtype(out)} safetensors).",
        f"Tokenizer: MidiTok 3.1.0 MMM/REMI base of {vocab.base_size} ids + BPE inside bars to {vocab.size} ids "
        "(`tokenizer.json`, shipped beside the weights).",
        "",
        "## Training",
        "",
        *_training_lines(meta, tcfg),
        "",
        "## Data",
        "",
        f"{manifest.get('n_kept', '?')} of {manifest.get('n_files', '?')} files kept after validation and "
        "de-duplication (`midirwkv prepare`; split by content hash):",
        "",
        "| split | files | tracks | bars | base tokens |",
        "|---|---|---|---|---|",
        *(f"| {k} | {v.get('files')} | {v.get('tracks')} | {v.get('bars')} | {v.get('tokens'):,} |"
          for k, v in splits.items()),
        "",
        "Sources and licences:",
        *_source_licences(manifest.get("sources", [])),
        "",
        "## Validation",
        "",
        f"- Validation loss (all predicted tokens, nats/token): last {val:.4f}, best {best:.4f}." if val is not None
        else "- No validation was recorded.",
        f"- Infill-span loss (the generated bars alone, nats/token): {span:.4f}." if span is not None else "",
        "- Measured on a fixed set of validation samples of the held-out split (the same at every validation).",
        "",
        "![validation curve](val_curve.png)",
        "",
    ]
    if notes:
        lines += [notes.strip(), ""]
    lines += [
        "## Reproduce",
        "",
        "```",
        "midirwkv prepare " + " ".join(f"CORPORA_DIR/{Path(s).name}" for s in manifest.get("sources", []))
        + " -o cache/scraped",
        f"midirwkv bpe-train cache/scraped -o bpe{vocab.size}.json --vocab-size {vocab.size} --limit 1000000",
        *_train_commands(meta, cfg, vocab.size),
        *(["python -m midirwkv.train.card runs/default"] if len(lineage(meta)) == 1 else []),
        "```",
        "",
        "To continue training on a new machine (the resumable checkpoints stay outside git), start a new run from "
        "these weights: `midirwkv train --data cache/scraped -o runs/next --init-from "
        "src/midirwkv/assets/default_model --max-minutes 120`, then publish it with "
        "`python -m midirwkv.train.card runs/next --data cache/scraped`; it replaces this model only if its "
        "validation loss is lower on the same validation samples.",
        "",
    ]
    path = out / "MODEL_CARD.md"
    path.write_text("\n".join(line for line in lines if line is not None) + "\n", encoding="utf-8")
    return path


_VAL_KEYS = ("val_split", "val_seed", "eval_batches", "micro_batch", "ctx_len", "p_track")


def _val_settings(meta: dict) -> dict:
    """The settings that define a run's validation samples (older runs drew them with ``seed``, and wrote the
    other tracks of a target-last prompt in file order)."""
    c = dict(meta.get("train_config") or {})
    c.setdefault("val_seed", c.get("seed", 0))
    return {k: c.get(k) for k in _VAL_KEYS} | {"data": (meta.get("data_manifest") or {}).get("vocab_hash"),
                                               "other_order": meta.get("other_order", "file")}


def compare_on_same_samples(run_dir: str | Path, out: str | Path, data_dir: str | Path
                            ) -> tuple[tuple[float, float], tuple[float, float]]:
    """((loss, span loss) of the model in ``out``, (loss, span loss) of ``run_dir/final``) on the samples
    ``out``'s run validated on.

    Runs with other validation settings (another seed before ``val_seed`` existed, another context) logged
    losses on other samples; this recomputes both on one set so that the better-only rule compares like with like.
    Each model reads the samples in the prompt layout it was trained with (``music.infill.layout_of``): the same
    files, spans, tracks and infilled tokens, only the order of the context tracks differs, so the span losses
    of two layouts are comparable.
    """
    from midirwkv.config import TrainConfig
    from midirwkv.model.checkpoint import load_checkpoint
    from midirwkv.music.infill import layout_of
    from midirwkv.music.vocab import Vocab
    from midirwkv.train.batches import validation_loss

    old_meta = _meta(Path(out))
    settings = _val_settings(old_meta)
    tc = dict(old_meta.get("train_config") or {})
    losses = []
    for folder in (Path(out), Path(run_dir) / "final"):
        model, tokenizer, meta = load_checkpoint(folder)
        cfg = TrainConfig(data_dir=str(data_dir), out_dir=str(run_dir), model=tc.get("model") or {}, max_steps=1,
                          prompt_layout=layout_of(meta), **{k: settings[k] for k in _VAL_KEYS})
        losses.append(validation_loss(model, data_dir, Vocab.load(tokenizer), cfg))
    return losses[0], losses[1]


def publish(run_dir: str | Path, out: str | Path = DEFAULT_OUT, notes: str = "", force: bool = False,
            data_dir: str | Path | None = None) -> Path:
    """Copy ``run_dir/final`` into ``out`` (atomically) with a validation curve and a model card.

    The model in ``out`` is replaced only by a better one: a lower validation loss on the same validation
    samples. When the two runs validated on different samples, ``data_dir`` (the token cache) lets both be
    measured on ``out``'s samples; without it that is an error.
    """
    from midirwkv.model.checkpoint import join_weights, weight_files, weights_bytes
    from midirwkv.train.runlog import plot_curves

    run_dir, out = Path(run_dir), Path(out)
    final = run_dir / "final"
    missing = [f for f in FILES if not (final / f).is_file()]
    if "model.safetensors" in missing and final.is_dir() and any(final.glob("model-*-of-*.safetensors")):
        weight_files(final)                     # split weights (a device run): complete, or a clear error
        missing.remove("model.safetensors")
    if missing:
        raise CheckpointError(f"the run has no finished model ({', '.join(missing)} missing)", argument="run_dir",
                              value=str(run_dir), fix="let `midirwkv train` finish (or stop it with Ctrl-C and "
                                                      "rerun it with the same folder and a smaller --max-minutes)")
    if weights_bytes(final) > MAX_BYTES:
        raise BadRequestError("the weights exceed the 50 MB the package may bundle", argument="run_dir",
                              value=str(run_dir), fix="publish a smaller model")
    meta = _meta(final)
    new_val, _ = _last_val(meta)
    if out.is_dir() and (out / "meta.json").is_file() and not force:
        old_val, _ = _last_val(_meta(out))
        same_tok = (out / "tokenizer.json").is_file() and _sha(out / "tokenizer.json") == _sha(final / "tokenizer.json")
        if not same_tok:
            raise BadRequestError("the new model uses another tokenizer: losses are not comparable",
                                  argument="--force", value=False,
                                  fix="compare them with `midirwkv evaluate` (bits per note), then pass --force")
        from midirwkv.music.infill import layout_of

        layouts = (layout_of(_meta(out)), layout_of(meta))
        if old_val is not None and (_val_settings(_meta(out)) != _val_settings(meta) or layouts[0] != layouts[1]):
            if data_dir is None:
                raise BadRequestError("the two runs validated on different samples (or layouts): their losses are "
                                      "not comparable", argument="--data", value=None,
                                      fix="pass --data CACHE_DIR to measure both on the same samples")
            (old_all, old_span), (new_all, new_span) = compare_on_same_samples(run_dir, out, data_dir)
            n_batches = _val_settings(_meta(out))['eval_batches']
            if layouts[0] != layouts[1]:
                # the context comes in another order: the infilled tokens are what both predict alike
                old_val, new_val = old_span, new_span
                comparison = (f"Compared with the model it replaced on the same {n_batches} validation batches "
                              f"(that model's validation settings), each model reading them in its own prompt "
                              f"layout ({layouts[0]} before, {layouts[1]} now), on the infilled tokens: span loss "
                              f"{old_span:.4f} before, {new_span:.4f} now (all tokens: {old_all:.4f}, "
                              f"{new_all:.4f}).")
            else:
                old_val, new_val = old_all, new_all
                comparison = (f"Compared with the model it replaced on the same {n_batches} validation batches "
                              f"(that model's validation settings): {old_all:.4f} before, {new_all:.4f} now "
                              f"(span loss {old_span:.4f}, {new_span:.4f}).")
            notes = f"{comparison}\n\n{notes}" if notes else comparison
        if old_val is not None and (new_val is None or new_val >= old_val):
            raise BadRequestError("the new model is not better than the bundled one", argument="run_dir",
                                  value=f"val loss {new_val} vs {old_val}", fix="train longer, or pass --force")
    with atomic_folder(out) as tmp:
        for f in FILES:
            if f == "model.safetensors" and not (final / f).is_file():
                join_weights(final, tmp / f)
            elif f == "meta.json":
                meta = portable_paths(meta)
                (tmp / f).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
            else:
                shutil.copyfile(final / f, tmp / f)
        if (run_dir / "train_log.csv").is_file():
            # a run started from a published model continues that model's log and curve
            init = meta.get("init_from")
            previous = Path(init) / "train_log.csv" if init and meta.get("init_meta") else None
            combine_logs(previous, run_dir / "train_log.csv", tmp / "train_log.csv")
            plot_curves(tmp / "train_log.csv", tmp / "val_curve.png")
        write_card(tmp, meta, _params(tmp), notes)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m midirwkv.train.card", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="folder of a finished `midirwkv train` run")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="model folder to write (default: the bundled one)")
    parser.add_argument("--notes", help="Markdown file appended to the card (e.g. how the size was chosen)")
    parser.add_argument("--force", action="store_true", help="replace the bundled model even if not better")
    parser.add_argument("--data", help="token cache: measure both models on the same validation samples when "
                                       "the runs validated on different ones")
    args = parser.parse_args(argv)
    try:
        notes = Path(args.notes).read_text(encoding="utf-8") if args.notes else ""
        out = publish(args.run_dir, args.out, notes, args.force, data_dir=args.data)
    except MidiRwkvError as exc:
        sys.stderr.write(f"card: error: {exc}\n")
        return exc.exit_code
    print(f"published {args.run_dir} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
