"""``midirwkv tune-state``, ``midirwkv tune-lora`` and ``midirwkv style-export``: style adaptation commands."""

from __future__ import annotations

import argparse
import json
import sys

STYLE_EXAMPLES = """examples:
  midirwkv tune-state --data my_songs/ --out mine.safetensors              # paper defaults: lr 5e-2, 16 epochs
  midirwkv tune-state --data pop909/ --meter 4/4 --max-songs 100 --epochs 8 --out pop.safetensors
  midirwkv infill song.mid --track 0 --bars 9-12 --style mine.safetensors
  midirwkv infill song.mid --track 0 --bars 9-12 --style pop.safetensors:0.7 --style folk.safetensors:0.3
  midirwkv tune-lora --data my_songs/ --rank 4 --out mine_lora4.safetensors --merged-out runs/mine_lora4
  midirwkv style-export mine.safetensors -o mine_state.pth                 # RWKV-PEFT / rwkv.cpp layout

Songs are read recursively from --data (.mid/.midi), or from a token cache made by `midirwkv prepare`.
A share of them (--val-fraction) is held out: the loss on them is measured after every epoch, training
stops after --patience epochs without improvement, and the best epoch is kept.
"""


def _add_common(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="folder of MIDI songs of the style, or a token cache")
    p.add_argument("--out", default=out_default, metavar="FILE.safetensors",
                   help=f"file to write (default {out_default})")
    p.add_argument("--model", metavar="DIR|PTH", help="checkpoint folder (default: the model shipped in the "
                   "package), or an RWKV-LM .pth with --tokenizer (the paper's released model)")
    p.add_argument("--tokenizer", metavar="JSON", help="with a .pth --model: the MidiTok tokenizer file it was "
                   "trained with")
    p.add_argument("--meter", default="", metavar="N/D", help="read every song in this meter (POP909: 4/4)")
    p.add_argument("--max-songs", type=int, default=0, metavar="N", help="use at most N songs (default all)")
    p.add_argument("--epochs", type=int, default=16, help="passes over the training songs (default 16, the paper's)")
    p.add_argument("--samples-per-song", type=int, default=1, metavar="K", help="samples per song per epoch")
    p.add_argument("--lr", type=float, default=0.0,
                   help="learning rate (default: 5e-2 for the state as in the paper, 1e-3 for LoRA)")
    p.add_argument("--lr-final", type=float, default=-1.0, help="cosine decay target (default -1: constant)")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--micro-batch", type=int, default=4, metavar="B", help="samples per step (default 4)")
    p.add_argument("--ctx-len", type=int, default=1024, metavar="T", help="tokens per sample (default 1024)")
    p.add_argument("--p-track", type=float, default=0.25, help="share of track-infilling samples (default 0.25)")
    p.add_argument("--no-augment", action="store_true", help="no pitch/velocity augmentation")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of songs held out (default 0.1)")
    p.add_argument("--val-samples-per-song", type=int, default=2, metavar="K")
    p.add_argument("--patience", type=int, default=3, help="epochs without improvement before stopping (0 = never)")
    p.add_argument("--min-delta", type=float, default=1e-3, help="smallest validation improvement (nats/token)")
    p.add_argument("--min-bars", type=int, default=4, help="skip songs with fewer bars (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, metavar="N", help="torch CPU threads (default: torch's)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the ``midirwkv`` parser."""
    p = sub.add_parser("tune-state", help="learn a style's initial state from a few songs (paper: state tuning)",
                       epilog=STYLE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Learn only the initial recurrent state of every layer on songs of one style; "
                                   "use the file with --style.")
    _add_common(p, "style.safetensors")
    p.add_argument("--export", metavar="FILE.pth", help="also write the state in RWKV-PEFT / rwkv.cpp layout")
    p.set_defaults(func=cmd_tune_state)

    p = sub.add_parser("tune-lora", help="learn LoRA matrices on a few songs (the paper's baseline)",
                       epilog=STYLE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Learn only LoRA matrices on songs of one style; the adapter loads with "
                                   "--style (alone) or merges into a checkpoint with --merged-out.")
    _add_common(p, "style_lora.safetensors")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank (paper: 4 and 32; default 4)")
    p.add_argument("--alpha", type=float, default=0.0, help="LoRA alpha (default: equal to the rank, as the paper)")
    p.add_argument("--targets", default="att.receptance,att.key,att.value,att.output,ffn.key,ffn.value",
                   help="comma list of layers that get LoRA")
    p.add_argument("--merged-out", metavar="DIR", help="also write a checkpoint folder with the adapter merged in")
    p.set_defaults(func=cmd_tune_lora)

    p = sub.add_parser("style-export", help="write a style file's state in the RWKV-PEFT / rwkv.cpp layout",
                       epilog="example:\n  midirwkv style-export style.safetensors -o style_state.pth",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("style", metavar="STYLE.safetensors")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help=".pth (torch tensor dict, blocks.N.att.time_state [head, value, key]) or .safetensors")
    p.set_defaults(func=cmd_style_export)


def _config(args: argparse.Namespace, method: str):
    from midirwkv.config import StyleConfig

    extra = {}
    if method == "lora":
        extra = {"lora_rank": args.rank, "lora_alpha": args.alpha,
                 "lora_targets": tuple(t.strip() for t in args.targets.split(",") if t.strip())}
    return StyleConfig(
        method=method, epochs=args.epochs, samples_per_song=args.samples_per_song, lr=args.lr,
        lr_final=args.lr_final, warmup_steps=args.warmup_steps, grad_clip=args.grad_clip,
        micro_batch=args.micro_batch, ctx_len=args.ctx_len, p_track=args.p_track, augment=not args.no_augment,
        meter=args.meter, max_songs=args.max_songs, val_fraction=args.val_fraction,
        val_samples_per_song=args.val_samples_per_song, patience=args.patience, min_delta=args.min_delta,
        min_bars=args.min_bars, seed=args.seed, threads=args.threads, progress=not args.quiet, **extra)


def _print_result(result) -> None:
    vals = ", ".join(f"{v:.4f}" for v in result.val_loss) or "none (no held-out songs)"
    sys.stderr.write(
        f"{result.method} tuning: {len(result.train_songs)} training songs, {len(result.valid_songs)} held out, "
        f"{len(result.skipped)} skipped; {result.epochs_run} epochs"
        f"{' (stopped early)' if result.stopped_early else ''}, best epoch {result.best_epoch}\n"
        f"validation loss per epoch (0 = before): {vals}\n"
        f"{result.n_params} numbers learned, {result.tokens} tokens at {result.tokens_per_s:.0f} tokens/s; "
        f"run time {result.elapsed_s:.1f}s (training {result.train_seconds:.1f}s)\n")
    print(json.dumps(result.summary()))


def _model(args: argparse.Namespace) -> str | None:
    """``--model`` as a checkpoint folder: an RWKV-LM .pth with ``--tokenizer`` is converted once (cached)."""
    from midirwkv.infer.import_paper import resolve_model

    model = resolve_model(args.model, args.tokenizer, progress=lambda m: sys.stderr.write(m + "\n"))
    return None if model is None else str(model)


def cmd_tune_state(args: argparse.Namespace) -> int:
    """``midirwkv tune-state``: learn a style file."""
    from midirwkv.infer.style import export_state
    from midirwkv.train.style import tune_state

    cfg = _config(args, "state")
    result = tune_state(args.data, args.out, model=_model(args), cfg=cfg)
    _print_result(result)
    sys.stderr.write(f"wrote {result.out_path}\n")
    if args.export:
        sys.stderr.write(f"wrote {export_state(result.out_path, args.export)}\n")
    return 0


def cmd_tune_lora(args: argparse.Namespace) -> int:
    """``midirwkv tune-lora``: learn a LoRA adapter."""
    from midirwkv.train.style import tune_lora

    cfg = _config(args, "lora")
    result = tune_lora(args.data, args.out, model=_model(args), cfg=cfg, merged_out=args.merged_out)
    _print_result(result)
    sys.stderr.write(f"wrote {result.out_path}" + (f" and {result.merged_dir}" if result.merged_dir else "") + "\n")
    return 0


def cmd_style_export(args: argparse.Namespace) -> int:
    """``midirwkv style-export``: the state in RWKV-PEFT / rwkv.cpp layout."""
    from midirwkv.infer.style import export_state

    print(export_state(args.style, args.output))
    return 0
