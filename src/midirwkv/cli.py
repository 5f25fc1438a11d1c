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
from midirwkv.errors import BadRequestError, MidiRwkvError
from midirwkv.infer.api import parse_bar_ranges, parse_durations, parse_int_range

INFILL_EXAMPLES = """examples:
  midirwkv inspect song.mid
  midirwkv infill song.mid --track 1 --bars 9-12 -o song_fill.mid
  midirwkv infill song.mid --track 1 --bars 9-12 --density 6 --polyphony 1-3 --durations quarter,eighth \\
      --context 16 --variations 4 --seed 7 -o fill.mid          # writes fill_v1.mid ... fill_v4.mid
  midirwkv infill song.mid --span 0:5-8 --span 2:13-16 -o two_spans.mid   # spans filled one after another

bars are 1-based and inclusive (9-12 is four bars); tracks are the indices printed by `midirwkv inspect`.
Controls not given on the command line are measured from the original bars (--free-controls: left free).
"""

class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2) instead of usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and runtime")
    g.add_argument("--model", metavar="DIR", help="checkpoint folder (default: the model shipped in the package)")
    g.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: physical cores)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress or timings on stderr")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (paper defaults)")
    g.add_argument("--variations", type=int, default=1, metavar="K", help="how many results (sampled as one batch)")
    g.add_argument("--seed", type=int, metavar="S", help="random seed; variation i uses S+i (default: random)")
    g.add_argument("--temperature", type=float, default=1.0, help="default 1.0")
    g.add_argument("--repetition-penalty", type=float, default=1.2, help="default 1.2")
    g.add_argument("--top-k", type=int, default=20, help="default 20 (0 = off)")
    g.add_argument("--top-p", type=float, default=0.95, help="default 0.95 (1 = off)")
    g.add_argument("--min-prob", type=float, default=9e-4, help="probability floor, default 9e-4 (0 = off)")
    g.add_argument("--control-retries", type=int, default=0, metavar="N",
                   help="re-sample each bar that misses its controls up to N times (default 0)")


def _add_control_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("per-bar controls (applied to every filled bar)")
    g.add_argument("--density", type=int, metavar="N", help="notes per bar, 0..18 (18 means 18 or more)")
    g.add_argument("--polyphony", metavar="MIN-MAX", help="notes starting together, 1..6, e.g. 1-3")
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
    p.add_argument("--context", type=int, default=16, metavar="BARS", help="bars of context each side (default 16)")
    p.add_argument("--max-prompt-tokens", type=int, default=None, metavar="N",
                   help="cap on prompt tokens (default 8192; raise it for long files with wide context)")
    p.add_argument("-o", "--output", metavar="OUT.mid", help="output file (default: IN_infill_bars<A-B>.mid)")
    p.add_argument("--report", metavar="REPORT.json", help="also write the per-bar control report as JSON")
    _add_control_options(p)
    _add_sampling_options(p)
    _add_model_options(p)
    p.set_defaults(func=cmd_infill)

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

    p = sub.add_parser("inspect", help="tracks, bars, meters and per-bar controls of a MIDI file")
    p.add_argument("input", metavar="IN.mid")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_inspect)
    return parser


# ----------------------------------------------------------------------------------------------- helpers

class _Progress:
    """Timed progress lines on stderr (silent with --quiet)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            sys.stderr.write(f"[{time.perf_counter() - self.t0:6.2f}s] {message}\n")
            sys.stderr.flush()


def _input_path(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise BadRequestError("input file not found", argument="IN.mid", value=text, fix="check the path")
    return path


def _sample_config(args: argparse.Namespace):
    from midirwkv.config import SampleConfig

    return SampleConfig(temperature=args.temperature, repetition_penalty=args.repetition_penalty, top_k=args.top_k,
                        top_p=args.top_p, min_prob=args.min_prob, control_retries=args.control_retries)


def _spans(args: argparse.Namespace) -> list[tuple[int, str]]:
    """(track, bars text) pairs from --track/--bars and repeated --span."""
    spans: list[tuple[int, str]] = []
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
    for _, bars in spans:
        parse_bar_ranges(bars, argument="--bars")
    return spans


def _check_controls(args: argparse.Namespace) -> None:
    """Reject bad control values before any model is loaded."""
    if args.density is not None and not 0 <= args.density <= 18:
        raise BadRequestError("--density must be 0..18 (18 means 18 or more notes)", argument="--density",
                              value=args.density, fix="e.g. --density 6")
    if args.polyphony is not None:
        parse_int_range(args.polyphony, "--polyphony", 1, 6)
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
    from midirwkv.infer import api

    progress = _Progress(args.quiet)
    source = _input_path(args.input)
    spans = _spans(args)
    _check_controls(args)
    tag = "infill_" + "_".join(f"t{t}_bars{b.replace(',', '+')}" for t, b in spans) if len(spans) > 1 or args.span \
        else f"infill_bars{spans[0][1].replace(',', '+')}"
    outputs = api.output_paths(source, args.output, args.variations, tag)
    sample = _sample_config(args)
    engine = api.load_engine(args.model, threads=args.threads, progress=progress)
    _, report = api.infill(
        source, spans=[api.Span(track=t, bars=b) for t, b in spans], density=args.density,
        polyphony=args.polyphony, durations=args.durations, free_controls=args.free_controls,
        context=args.context, max_prompt_tokens=args.max_prompt_tokens, variations=args.variations,
        seed=args.seed, sample=sample, engine=engine, progress=progress)
    for score, path in zip(report.scores, outputs):
        api.save_score(score, path, protect=source)
        progress(f"wrote {path}")
    _write_report(args.report, report)
    if not args.quiet:
        sys.stderr.write(report.summary() + "\n")
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


def cmd_inspect(args: argparse.Namespace) -> int:
    """``midirwkv inspect``: describe a file."""
    from midirwkv.music import inspect as music_inspect

    source = _input_path(args.input)
    info = music_inspect.describe(source)
    if args.json:
        print(json.dumps(info if isinstance(info, (dict, list)) else info.to_dict(), indent=2))
    else:
        print(info if isinstance(info, str) else music_inspect.format_description(info))
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
    except OSError as exc:
        sys.stderr.write(f"midirwkv {args.command}: error: {exc.strerror or exc} ({exc.filename or ''})\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"midirwkv {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
