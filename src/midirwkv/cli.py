"""The ``midirwkv`` command: thin subcommands over the library.

Every subcommand validates its arguments, calls one library function and prints the result. Progress and
timings go to stderr; errors are one line on stderr with a non-zero exit status (2 bad input, 3 generation
failed, 1 file system error, 130 interrupted).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from midirwkv import __version__
from midirwkv.cli_common import Progress, add_sample_flags, sample_config
from midirwkv.config import PROMPT_LAYOUTS, SampleConfig
from midirwkv.errors import BadRequestError, MidiRwkvError
from midirwkv.infer.edits import DEFAULT_STRATEGY, STRATEGIES
from midirwkv.infer.requests import parse_bar_ranges, parse_durations, parse_int_range
from midirwkv.infer.style import parse_style_args
from midirwkv.music.controls import DENSITY_MAX, POLY_RANGE
from midirwkv.music.infill import CONTEXT_BARS

POLY_TEXT = f"{POLY_RANGE[0]}..{POLY_RANGE[1]}"

INFILL_EXAMPLES = """examples:
  midirwkv inspect song.mid
  midirwkv infill song.mid --track 1 --bars 9-12 -o song_fill.mid
  midirwkv infill song.mid --track 1 --bars 9-12 --density 6 --polyphony 1-3 --durations quarter,eighth \\
      --context 16 --variations 4 --seed 7 -o fill.mid          # writes fill_v1.mid ... fill_v4.mid
  midirwkv infill song.mid --span 0:5-8 --span 2:13-16 -o two_spans.mid   # spans filled one after another

bars are 1-based and inclusive (9-12 is four bars); tracks are the indices printed by `midirwkv inspect`.
Controls not given on the command line are measured from the original bars (--free-controls: left free).
"""

ADD_TRACK_EXAMPLES = """examples:
  midirwkv add-track song.mid --program 33 --name Bass -o song_bass.mid        # a new electric bass track
  midirwkv add-track song.mid --drums --density 4-12 --variations 3 --seed 7 -o drums.mid
                                                               # writes drums_v1.mid ... drums_v3.mid
  midirwkv add-track song.mid --regenerate 1 --polyphony 1-2 -o song_new_track1.mid   # rewrite track 1

The track is written over every bar of the file (real meters) and ends at its last bar; every other track
keeps its notes. Track controls: --density N or MIN-MAX notes per bar (0..18), --polyphony MIN-MAX (1..6),
--durations (note lengths that occur), --repetition 0..9. A new track leaves the others free; --regenerate
measures them from the original track (--free-controls: left free). Drum tracks take --density only.
"""

SERVE_EXAMPLES = """examples:
  midirwkv serve                                  # http://127.0.0.1:8000 with the shipped model
  midirwkv serve --port 8080 --data-dir ~/midirwkv-data --model runs/small/final --threads 4

Uploads and results live under --data-dir (they survive a restart). The API is described at /docs.
"""

TRAIN_EXAMPLES = """examples:
  midirwkv prepare corpora/*.tar.gz -o cache/
  midirwkv bpe-train cache/ -o tokenizer.json --vocab-size 4000
  midirwkv train --data cache/ -o runs/small --tokenizer tokenizer.json --layers 4 --width 128 --max-minutes 60
  midirwkv train --data cache/ -o runs/small --max-minutes 120      # same folder: resumes the run
  torchrun --nproc_per_node 8 -m midirwkv train --data cache/ -o runs/paper --max-tokens 2000000000
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2) instead of usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and runtime")
    g.add_argument("--model", metavar="DIR|PTH", help="checkpoint folder (default: the model shipped in the "
                   "package), or an RWKV-LM .pth with --tokenizer (the paper's released model)")
    g.add_argument("--tokenizer", metavar="JSON", help="with a .pth --model: the MidiTok tokenizer file it was "
                   "trained with (converted once into a cached checkpoint folder)")
    g.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: physical cores)")
    g.add_argument("--int8", action="store_true",
                   help="decode with int8 weights: faster where memory bandwidth limits, logits within ~1 %%")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress or timings on stderr")
    g.add_argument("--style", action="append", metavar="FILE[:WEIGHT]",
                   help="start from a learned style (`midirwkv tune-state`); repeat with weights summing to 1 "
                        "for a blend, e.g. --style a.safetensors:0.7 --style b.safetensors:0.3")


def _add_sampling_options(p: argparse.ArgumentParser, pitch_prior: bool = False) -> None:
    g = p.add_argument_group("sampling (defaults chosen on validation prompts; see reports/sampling)")
    g.add_argument("--variations", type=int, default=1, metavar="K", help="how many results (sampled as one batch)")
    g.add_argument("--seed", type=int, metavar="S", help="random seed; variation i uses S+i (default: random)")
    add_sample_flags(g, pitch_prior)
    g.add_argument("--control-retries", type=int, default=SampleConfig().control_retries, metavar="N",
                   help="re-sample each bar that misses its controls up to N times (default 0)")


def _add_control_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("per-bar controls (applied to every filled bar)")
    g.add_argument("--density", type=int, metavar="N",
                   help=f"notes per bar, 0..{DENSITY_MAX} ({DENSITY_MAX} means {DENSITY_MAX} or more)")
    g.add_argument("--polyphony", metavar="MIN-MAX", help=f"notes starting together, {POLY_TEXT}, e.g. 1-3")
    g.add_argument("--durations", metavar="LIST",
                   help="note lengths that occur: comma list of whole,half,quarter,eighth,sixteenth (or none)")
    g.add_argument("--free-controls", action="store_true",
                   help="leave controls not given here free instead of measuring them from the original bars")


def build_parser() -> argparse.ArgumentParser:
    """The full ``midirwkv`` argument parser."""
    parser = _Parser(prog="midirwkv", description="Controllable multi-track MIDI bar infilling with RWKV-7.",
                     epilog=INFILL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"midirwkv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("infill", help="regenerate bars of one or more tracks", epilog=INFILL_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Regenerate bars of a track, keeping everything else; the input is never "
                                   "modified.")
    p.add_argument("input", metavar="IN.mid")
    p.add_argument("--track", type=int, metavar="T", help="track index (see `midirwkv inspect`)")
    p.add_argument("--bars", metavar="A-B[,C-D]", help="bars to fill, 1-based inclusive, e.g. 9-12")
    p.add_argument("--span", action="append", metavar="T:A-B", default=[],
                   help="a track and bars to fill; repeat for several spans (filled in the order given)")
    p.add_argument("--strategy", choices=STRATEGIES, default=DEFAULT_STRATEGY,
                   help="several spans: sequential (in the order given), reverse (last first) or joint (per "
                        "track one fill from its first span to its last, the bars between kept as they are; "
                        f"reports/multi_edit) (default {DEFAULT_STRATEGY})")
    p.add_argument("--context", type=int, default=CONTEXT_BARS, metavar="BARS",
                   help=f"bars of context each side (default {CONTEXT_BARS})")
    p.add_argument("--max-prompt-tokens", type=int, default=None, metavar="N",
                   help="cap on prompt tokens (default 8192; raise it for long files with wide context)")
    p.add_argument("-o", "--output", metavar="OUT.mid", help="output file (default: IN_infill_bars<A-B>.mid)")
    p.add_argument("--report", metavar="REPORT.json", help="also write the per-bar control report as JSON")
    _add_control_options(p)
    _add_sampling_options(p, pitch_prior=True)
    _add_model_options(p)
    p.set_defaults(func=cmd_infill)

    p = sub.add_parser("add-track", help="write a new track for an instrument, or regenerate a whole track",
                       epilog=ADD_TRACK_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Write a whole track over every bar of the file with the other tracks as "
                                   "context; the input is never modified.")
    p.add_argument("input", metavar="IN.mid")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--program", type=int, metavar="P", help="General MIDI program 0..127 of a new track")
    what.add_argument("--drums", action="store_true", help="a new drum track")
    what.add_argument("--regenerate", type=int, metavar="T", help="write existing track T again from scratch")
    p.add_argument("--name", default="", help="name of the new track (default: the instrument)")
    p.add_argument("--max-prompt-tokens", type=int, default=None, metavar="N",
                   help="cap on prompt tokens (default 65536: the whole file is context)")
    p.add_argument("-o", "--output", metavar="OUT.mid", help="output file (default: IN_add_<instrument>.mid)")
    p.add_argument("--report", metavar="REPORT.json", help="also write the control report as JSON")
    g = p.add_argument_group("track controls (of the whole written track)")
    g.add_argument("--density", metavar="N|MIN-MAX",
                   help=f"notes per bar, 0..{DENSITY_MAX} ({DENSITY_MAX} means {DENSITY_MAX} or more), e.g. 4-10")
    g.add_argument("--polyphony", metavar="MIN-MAX", help=f"notes starting together, {POLY_TEXT}, e.g. 1-3")
    g.add_argument("--durations", metavar="LIST", help="note lengths that occur: comma list of whole,half,"
                                                      "quarter,eighth,sixteenth,thirtysecond (or none)")
    g.add_argument("--repetition", type=int, metavar="0..9", help="share of bars repeating one of the 4 before")
    g.add_argument("--free-controls", action="store_true",
                   help="with --regenerate: leave controls not given here free instead of measuring them")
    _add_sampling_options(p)
    _add_model_options(p)
    p.set_defaults(func=cmd_add_track)

    p = sub.add_parser("serve", help="the local web page and HTTP API (infill by clicking bars)",
                       epilog=SERVE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--data-dir", default="midirwkv-data", metavar="DIR",
                   help="folder for uploads and results (default ./midirwkv-data)")
    p.add_argument("--model", metavar="DIR|PTH", help="checkpoint folder (default: the model shipped in the "
                   "package), or an RWKV-LM .pth with --tokenizer (the paper's released model)")
    p.add_argument("--tokenizer", metavar="JSON", help="with a .pth --model: the MidiTok tokenizer file it was "
                   "trained with")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: physical cores)")
    p.add_argument("--int8", action="store_true",
                   help="decode with int8 weights: faster where memory bandwidth limits, logits within ~1 %%")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("prepare", help="scan, validate, deduplicate, split and tokenise MIDI corpora",
                       epilog="example:\n  midirwkv prepare /data/pop909::4/4 /data/lakh.tar.gz -o cache/ --workers 4",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="folder or .tar.gz of MIDI files; 'PATH::4/4' reads every file of it in 4/4")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="token cache folder (reruns resume)")
    p.add_argument("--tokenizer", metavar="JSON", help="tokenizer file (default: the shipped one)")
    p.add_argument("--splits", default="0.9,0.05,0.05", metavar="TRAIN,VALID,TEST")
    p.add_argument("--seed", type=int, default=0, help="salt of the split hash")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--min-bars", type=int, default=8)
    p.add_argument("--min-notes", type=int, default=101)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("bpe-train", help="train BPE on the train split of a token cache (bars never merged across)",
                       epilog="example:\n  midirwkv bpe-train cache/ -o tokenizer.json --vocab-size 4000",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cache", metavar="DIR", help="token cache written by `midirwkv prepare`")
    p.add_argument("-o", "--output", required=True, metavar="JSON", help="tokenizer file to write (not overwritten)")
    p.add_argument("--vocab-size", type=int, default=16000, help="ids in the new vocabulary (default 16000)")
    p.add_argument("--limit", type=int, default=None, metavar="BARS", help="read at most this many bars")
    p.add_argument("--split", default="train", choices=("train", "valid", "test"))
    p.set_defaults(func=cmd_bpe_train)

    p = sub.add_parser("train", help="pre-train (or continue training) a model on a token cache",
                       epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="DIR", help="token cache written by `midirwkv prepare`")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="run folder (logs, checkpoints, final/)")
    p.add_argument("--config", metavar="JSON", help="TrainConfig fields as JSON; flags given here override it")
    p.add_argument("--tokenizer", metavar="JSON", help="tokenizer the model uses (default: the shipped one)")
    p.add_argument("--init-from", metavar="DIR", help="checkpoint folder whose weights start a new run")
    p.add_argument("--layers", type=int, help="model depth (default: the paper's 12); with --init-from, a "
                   "deeper model grown from the checkpoint's layers (new layers start as exact no-ops)")
    p.add_argument("--width", type=int, help="model width (default: the paper's 384)")
    p.add_argument("--head-size", type=int, help="channels per head (default 64)")
    p.add_argument("--lora-dim", type=int, metavar="N",
                   help="low-rank dim of decay/a/v projections (gate gets 2N; default 32)")
    for flag, kind, text in (("--ctx-len", int, "tokens per sequence"), ("--micro-batch", int, "sequences per step"),
                             ("--grad-accum", int, "micro-batches per optimizer step"), ("--lr", float, "peak lr"),
                             ("--lr-floor", float, "final lr"), ("--warmup-steps", int, "linear warm-up steps"),
                             ("--max-steps", int, "stop after N steps"), ("--max-tokens", int, "stop after N tokens"),
                             ("--max-minutes", float, "stop after N minutes of training (summed over resumes)"),
                             ("--eval-every", int, "validate every N steps"),
                             ("--eval-batches", int, "micro-batches per validation"),
                             ("--ckpt-every", int, "resumable checkpoint every N steps"),
                             ("--seed", int, "seed"), ("--threads", int, "torch CPU threads"),
                             ("--workers", int, "sample-building worker processes"),
                             ("--span-weight", float, "loss weight of the infilled tokens (default 1)")):
        p.add_argument(flag, type=kind, help=text)
    p.add_argument("--arch", choices=("rwkv7", "gpt2"), help="rwkv7 (default) or the gpt2 Transformer baseline")
    p.add_argument("--prompt-layout", choices=PROMPT_LAYOUTS,
                   help="track order of bar-infilling samples: target_last (default) or file_order (the paper's)")
    p.add_argument("--no-resume", action="store_true", help="start over even if the run folder has checkpoints")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pack-device", help="pack training samples, validation batches and tokenizer for a one-shot "
                                           "GPU run (python -m midirwkv.train.device)",
                       epilog="example:\n  midirwkv pack-device --data cache/scraped -o device --workers 2\n"
                              "  python -m midirwkv.train.device --pack device --out OUT_DIR --minutes 9",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="DIR", help="token cache written by `midirwkv prepare`")
    p.add_argument("-o", "--output", default="device", metavar="DIR",
                   help="pack folder (default: device, git-ignored; parts written earlier are reused)")
    p.add_argument("--tokenizer", metavar="JSON", help="tokenizer of the ids (default: the bundled model's)")
    p.add_argument("--max-mib", type=float, default=45.0, help="size of the pack (default 45 MiB)")
    p.add_argument("--max-samples", type=int, default=0, help="at most this many training samples (0: as fit)")
    p.add_argument("--part-samples", type=int, default=1024, help="training samples per part file")
    p.add_argument("--workers", type=int, default=1, help="processes building samples")
    p.add_argument("--start", metavar="DIR", help="checkpoint to copy into the pack as the run's start (the "
                                                  "bundled model travels with the working tree anyway)")
    for flag, kind, text in (("--ctx-len", int, "tokens per sample (default 2048, the CPU runs')"),
                             ("--seed", int, "seed of the training samples (default 0)"),
                             ("--p-track", float, "share of track-infilling samples (default 0.25)"),
                             ("--val-seed", int, "seed of the validation samples (default 0)"),
                             ("--eval-batches", int, "validation batches (default 6)"),
                             ("--micro-batch", int, "samples per validation batch (default 4)")):
        p.add_argument(flag, type=kind, help=text)
    p.add_argument("--prompt-layout", choices=PROMPT_LAYOUTS, help="default target_last")
    p.add_argument("--no-augment", action="store_true", help="no pitch/velocity augmentation of training samples")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_pack_device)

    p = sub.add_parser("inspect", help="tracks, bars, meters and per-bar controls of a MIDI file")
    p.add_argument("input", metavar="IN.mid")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_inspect)

    from midirwkv import cli_eval, cli_style  # their subcommands live beside their layers' CLIs
    cli_style.register(sub)
    cli_eval.register(sub)
    from midirwkv import cli_daw
    cli_daw.register(sub)
    return parser


# ----------------------------------------------------------------------------------------------- helpers


def _input_path(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise BadRequestError("input is a folder, not a MIDI file", argument="IN.mid", value=text,
                              fix="name one .mid file inside it")
    if not path.is_file():
        raise BadRequestError("input file not found", argument="IN.mid", value=text, fix="check the path")
    return path


def _spans(args: argparse.Namespace) -> list[tuple[int, object]]:
    """(track, parsed bar ranges) pairs from --track/--bars and repeated --span: the bars are parsed here once,
    before the model loads, and handed on parsed (``requests.BarRanges``)."""
    spans: list[tuple[int, object]] = []
    if args.bars is not None or args.track is not None:
        if args.bars is None or args.track is None:
            raise BadRequestError("--track and --bars go together", argument="--bars" if args.bars is None else
                                  "--track", value=None, fix="give both, e.g. --track 1 --bars 9-12")
        spans.append((args.track, args.bars))
    for text in args.span:
        track, sep, bars = text.partition(":")
        if not sep or not track.strip().isdigit():
            raise BadRequestError("--span must look like TRACK:BARS", argument="--span", value=text,
                                  fix="e.g. --span 1:9-12")
        spans.append((int(track), bars))
    if not spans:
        raise BadRequestError("nothing to fill", argument="--bars", value=None,
                              fix="give --track T --bars A-B or --span T:A-B")
    return [(track, parse_bar_ranges(bars, argument="--bars")) for track, bars in spans]


def _check_controls(args: argparse.Namespace) -> None:
    """Reject bad control values before any model is loaded."""
    if args.density is not None:
        parse_int_range(args.density, "--density", 0, DENSITY_MAX)
    if args.polyphony is not None:
        parse_int_range(args.polyphony, "--polyphony", *POLY_RANGE)
    if args.durations is not None:
        parse_durations(args.durations, "--durations")
    if args.variations < 1:
        raise BadRequestError("--variations must be 1 or more", argument="--variations", value=args.variations,
                              fix="e.g. --variations 4")


def _write_report(path: str | None, report) -> None:
    if path:
        from midirwkv.infer.api import write_atomic

        write_atomic(json.dumps(report.to_dict(), indent=2).encode(), path)


# ----------------------------------------------------------------------------------------------- commands

def cmd_infill(args: argparse.Namespace) -> int:
    """``midirwkv infill``: fill spans, write one file per variation."""
    from midirwkv.infer import api, requests

    progress = Progress(args.quiet)
    source = _input_path(args.input)
    spans = _spans(args)
    _check_controls(args)
    tag = "infill_" + "_".join(f"t{t}_bars{str(b.text).replace(',', '+')}" for t, b in spans) \
        if len(spans) > 1 or args.span else f"infill_bars{str(spans[0][1].text).replace(',', '+')}"
    outputs = api.output_paths(source, args.output, args.variations, tag, report=args.report)
    requests.check_seed(args.seed, "--seed")
    sample = sample_config(args)
    engine = api.load_engine(args.model, threads=args.threads, progress=progress, int8=args.int8,
                             tokenizer=args.tokenizer)
    _, report = api.infill(
        source, spans=[requests.Span(track=t, bars=b) for t, b in spans], density=args.density,
        polyphony=args.polyphony, durations=args.durations, free_controls=args.free_controls,
        context=args.context, max_prompt_tokens=args.max_prompt_tokens, variations=args.variations,
        seed=args.seed, sample=sample, engine=engine, progress=progress, style=parse_style_args(args.style),
        strategy=args.strategy)
    for score, path in zip(report.scores, outputs):
        api.save_score(score, path, protect=source)
        progress(f"wrote {path}")
    _write_report(args.report, report)
    if not args.quiet:
        sys.stderr.write(report.summary() + "\n")
    return 0


def cmd_add_track(args: argparse.Namespace) -> int:
    """``midirwkv add-track``: write a new (or regenerated) whole track, one file per variation."""
    from midirwkv.infer import api, requests

    progress = Progress(args.quiet)
    source = _input_path(args.input)
    if args.variations < 1:
        raise BadRequestError("--variations must be 1 or more", argument="--variations", value=args.variations,
                              fix="e.g. --variations 4")
    if args.program is not None and not 0 <= args.program <= 127:
        raise BadRequestError("--program must be a General MIDI program 0..127", argument="--program",
                              value=args.program, fix="e.g. --program 33 (electric bass); --drums for drums")
    program = -1 if args.drums else args.program
    is_drum = program == -1
    # reject bad control values before the model is loaded
    requests.track_controls(density=args.density, polyphony=args.polyphony, durations=args.durations,
                       repetition=args.repetition, is_drum=is_drum)
    if args.regenerate is not None:
        tag = f"regen_track{args.regenerate}"
    else:
        tag = "add_drums" if is_drum else f"add_program{program}"
    outputs = api.output_paths(source, args.output, args.variations, tag, report=args.report)
    requests.check_seed(args.seed, "--seed")
    sample = sample_config(args)
    engine = api.load_engine(args.model, threads=args.threads, progress=progress, int8=args.int8,
                             tokenizer=args.tokenizer)
    _, report = api.add_track(
        source, program, regenerate=args.regenerate, name=args.name, density=args.density,
        polyphony=args.polyphony, durations=args.durations, repetition=args.repetition,
        free_controls=args.free_controls, max_prompt_tokens=args.max_prompt_tokens, variations=args.variations,
        seed=args.seed, sample=sample, engine=engine, progress=progress, style=parse_style_args(args.style))
    for score, path in zip(report.scores, outputs):
        api.save_score(score, path, protect=source)
        progress(f"wrote {path}")
    _write_report(args.report, report)
    if not args.quiet:
        sys.stderr.write(report.summary() + "\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``midirwkv serve``: load the model once, serve the page and the API until interrupted."""
    if not 0 < args.port < 65536:
        raise BadRequestError("--port must be 1..65535", argument="--port", value=args.port, fix="e.g. --port 8000")
    if args.threads is not None and args.threads < 1:
        raise BadRequestError("--threads must be 1 or more", argument="--threads", value=args.threads,
                              fix="e.g. --threads 4")
    data_dir = Path(args.data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise BadRequestError("--data-dir is a file", argument="--data-dir", value=str(data_dir),
                              fix="name a folder (it is created when missing)")
    from midirwkv.server.app import serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.stderr.write(f"midirwkv serve: warning: listening on {args.host}: other machines can reach the "
                         "server (it has no login)\n")
    from midirwkv.infer.import_paper import resolve_model

    model = resolve_model(args.model, args.tokenizer, progress=lambda m: sys.stderr.write(m + "\n"))
    serve(args.host, args.port, data_dir, model, threads=args.threads, int8=args.int8)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """``midirwkv prepare``: build the token cache of one or more corpora."""
    from midirwkv.data.corpora import prepare_corpus

    try:
        splits = tuple(float(v) for v in args.splits.split(","))
    except ValueError:
        raise BadRequestError("--splits must be three fractions", argument="--splits", value=args.splits,
                              fix="e.g. --splits 0.9,0.05,0.05") from None
    report = prepare_corpus(args.sources, args.output, vocab=args.tokenizer, splits=splits, seed=args.seed,
                            workers=args.workers, min_bars=args.min_bars, min_notes=args.min_notes,
                            progress=not args.quiet, shard_size=args.shard_size)
    print(f"{report.n_kept} of {report.n_files} files kept in {report.out_dir} ({report.seconds:.1f}s, "
          f"{report.files_per_second:.1f} files/s)")
    for reason, count in sorted(report.dropped.items()):
        if count:
            print(f"  dropped {count}: {reason}")
    for split, numbers in report.per_split.items():
        print(f"  {split}: " + ", ".join(f"{k} {v}" for k, v in numbers.items()))
    return 0


def cmd_bpe_train(args: argparse.Namespace) -> int:
    """``midirwkv bpe-train``: learn BPE merges inside bars of a token cache's split."""
    from midirwkv.data.dataset import TokenCache
    from midirwkv.music.vocab import Vocab, train_bpe

    out = Path(args.output)
    if out.exists():
        raise BadRequestError("the output file exists", argument="--output", value=str(out),
                              fix="choose a new file name (tokenizers are never overwritten: ids would drift)")
    if args.vocab_size < Vocab.load().base_size:
        raise BadRequestError("--vocab-size is smaller than the base vocabulary", argument="--vocab-size",
                              value=args.vocab_size, fix=f"use at least {Vocab.load().base_size}")
    t0 = time.perf_counter()
    cache = TokenCache(args.cache, args.split)
    new = train_bpe(Vocab.load(), cache.iter_bars(limit=args.limit), args.vocab_size)
    new.save(out)
    print(f"wrote {out}: {new.size} ids ({new.base_size} base) in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``midirwkv train``: one resumable pre-training run (``torchrun`` for several processes)."""
    from midirwkv.config import ModelConfig, TrainConfig
    from midirwkv.train.loop import train

    fields: dict = {}
    if args.config:
        fields.update(json.loads(_input_path(args.config).read_text()))
    fields.update(data_dir=args.data, out_dir=args.output)
    for name in ("arch", "tokenizer", "init_from", "ctx_len", "micro_batch", "grad_accum", "lr", "lr_floor", "warmup_steps",
                 "max_steps", "max_tokens", "max_minutes", "eval_every", "eval_batches", "ckpt_every", "seed",
                 "threads", "workers", "span_weight", "prompt_layout"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.no_resume:
        fields["resume"] = False
    if args.quiet:
        fields["progress"] = False
    shape = {k: v for k, v in (("n_layer", args.layers), ("n_embd", args.width), ("head_size", args.head_size))
             if v is not None}
    if args.lora_dim is not None:
        shape.update(decay_lora=args.lora_dim, aaa_lora=args.lora_dim, mv_lora=args.lora_dim,
                     gate_lora=2 * args.lora_dim)
    if shape and args.init_from:
        if set(shape) != {"n_layer"}:
            raise BadRequestError("--init-from fixes the model shape (only --layers may grow it)",
                                  argument="--width/--head-size/--lora-dim", value=shape,
                                  fix="drop the shape flags when starting from a checkpoint, or give only "
                                      "--layers N to grow its depth")
        from midirwkv.model.checkpoint import read_checkpoint_info

        if not (Path(args.init_from) / "config.json").is_file():
            raise BadRequestError("--init-from is not a checkpoint folder (no config.json)",
                                  argument="--init-from", value=args.init_from,
                                  fix="pass the folder written by `midirwkv train` (its final/ folder)")
        base, _ = read_checkpoint_info(args.init_from)
        fields["model"] = ModelConfig.from_dict({**base.to_dict(), **shape}).to_dict()
        shape = {}
    if shape:
        base = fields.get("model") or {}
        if isinstance(base, str):
            base = json.loads(_input_path(base).read_text())
        if "vocab_size" not in base:
            from midirwkv.music.vocab import Vocab
            base["vocab_size"] = Vocab.load(fields["tokenizer"]).size if fields.get("tokenizer") else Vocab.load().size
        fields["model"] = ModelConfig.from_dict({**base, **shape}).to_dict()
    result = train(TrainConfig(**fields))
    print(json.dumps({k: v for k, v in vars(result).items() if isinstance(v, (int, float, str, type(None)))},
                     default=str))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """``midirwkv inspect``: describe a file."""
    from midirwkv.music import inspect as music_inspect

    source = _input_path(args.input)
    info = music_inspect.describe(source)
    print(json.dumps(info.to_dict(), indent=2) if args.json else music_inspect.format_description(info))
    return 0


def cmd_pack_device(args: argparse.Namespace) -> int:
    """``midirwkv pack-device``: the folder a one-shot GPU run trains from (``midirwkv.train.pack``)."""
    from midirwkv.train.pack import default_pack_config, pack_device

    fields = {k: v for k, v in (("ctx_len", args.ctx_len), ("seed", args.seed), ("p_track", args.p_track),
                                ("val_seed", args.val_seed), ("eval_batches", args.eval_batches),
                                ("micro_batch", args.micro_batch), ("prompt_layout", args.prompt_layout))
              if v is not None}
    if args.no_augment:
        fields["augment"] = False
    cfg = default_pack_config(args.data, args.output, **fields)
    meta = pack_device(args.data, args.output, cfg, tokenizer=args.tokenizer, max_mib=args.max_mib,
                       part_samples=args.part_samples, max_samples=args.max_samples, workers=args.workers,
                       start=args.start, progress=not args.quiet)
    tr = meta["train"]
    print(json.dumps({"pack": args.output, "bytes": meta["bytes"], "samples": tr["samples"], "tokens": tr["tokens"],
                      "share": tr["share"], "validation_samples": meta["valid"]["samples"],
                      "build_s": meta["build_s"]}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``midirwkv`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MidiRwkvError as exc:
        sys.stderr.write(f"midirwkv {args.command}: error: {exc}\n")
        return exc.exit_code
    except BrokenPipeError:   # e.g. `midirwkv inspect song.mid | head`: the reader left, nothing is wrong
        return 0
    except OSError as exc:
        sys.stderr.write(f"midirwkv {args.command}: error: {exc.strerror or exc} ({exc.filename or ''})\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"midirwkv {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
