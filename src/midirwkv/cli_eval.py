"""``midirwkv evaluate``: the evaluation protocol and report."""

from __future__ import annotations

import argparse
import shlex
import sys

EVALUATE_EXAMPLES = """examples:
  # held-out split of a prepared token cache, all five systems, 500 prompts of 4 bars with 8 context bars
  midirwkv evaluate --data cache/ --split test --model runs/small --baseline-model runs/gpt2 \\
      --systems copy,random-other,rwkv,rwkv-free,gpt2 --prompts 500 --bars 4 --context 8 --seed 0 -o reports/eval/test-4bar
  # MIDI files read in 4/4, every file (not used in training)
  midirwkv evaluate --data 'POP909/::4/4' --split all --model runs/small --systems copy,rwkv -o reports/eval/pop909
  midirwkv evaluate -o reports/eval/test-4bar --report-only     # rebuild report.md/json and plots
  midirwkv evaluate -o reports/eval/test-4bar --rescore          # recompute metrics from the saved tokens

Rerunning the same command resumes (prompts already scored are skipped); adding a system to --systems runs
only the new one. Output: settings.json, prompts.jsonl, results.jsonl, gens/<prompt>/ (prompt.json and a
MIDI per system, cut to the context window), report.json, report.md, plots/.
"""



def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the ``midirwkv`` parser."""
    from midirwkv.cli_common import add_sample_flags

    p = sub.add_parser("evaluate", help="score infills against baselines on seeded held-out prompts",
                       epilog=EVALUATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (resumable)")
    g = p.add_argument_group("data and prompts")
    g.add_argument("--data", nargs="+", metavar="SRC",
                   help="a token cache folder (`midirwkv prepare`), or MIDI folders / .tar.gz archives "
                        "('path::4/4' reads a source in 4/4)")
    g.add_argument("--split", default="test", help="train, valid, test (default), or all (MIDI sources only)")
    g.add_argument("--prompts", type=int, default=500, metavar="N", help="number of prompts (default 500)")
    g.add_argument("--bars", type=int, default=4, metavar="N", help="span length in bars (paper: 1, 2, 4, 8; default 4)")
    g.add_argument("--context", type=int, default=8, metavar="C", help="context bars on each side (default 8)")
    g.add_argument("--seed", type=int, default=0, help="seed of the prompt draw and the generations (default 0)")
    g.add_argument("--drums", default="include", choices=("include", "exclude", "only"),
                   help="drum tracks: drawn and reported apart (include, default), exclude, or only")
    g.add_argument("--splits", default="0.9,0.05,0.05", metavar="F,F,F",
                   help="MIDI sources: prepare's train,valid,test fractions (default 0.9,0.05,0.05)")
    g.add_argument("--split-seed", type=int, default=0, help="MIDI sources: prepare's split seed (default 0)")
    g.add_argument("--min-bars", type=int, default=8, help="MIDI sources: drop shorter files (as prepare)")
    g.add_argument("--min-notes", type=int, default=101, help="MIDI sources: drop files with fewer notes (as prepare)")
    g = p.add_argument_group("systems")
    g.add_argument("--systems", default="copy,random-other,rwkv,rwkv-free,gpt2",
                   help="comma list of copy, random-other, rwkv, rwkv-free, gpt2 (default: all five)")
    g.add_argument("--model", metavar="DIR|PTH", help="our checkpoint folder (default: the shipped model), or an "
                   "RWKV-LM .pth with --tokenizer (the paper's released model)")
    g.add_argument("--tokenizer", metavar="JSON", help="with a .pth --model: the MidiTok tokenizer file it was "
                   "trained with")
    g.add_argument("--baseline-model", metavar="DIR", help="GPT-2 baseline folder (`midirwkv train --arch gpt2`)")
    g.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: physical cores)")
    add_sample_flags(g, pitch_prior=True)
    g = p.add_argument_group("output")
    g.add_argument("--no-midi", action="store_true", help="do not save the MIDI of each generation")
    g.add_argument("--piano-rolls", type=int, default=4, metavar="K", help="before/after piano rolls (default 4)")
    g.add_argument("--report-only", action="store_true", help="only rebuild the report of an existing folder")
    g.add_argument("--rescore", action="store_true",
                   help="recompute every metric from the saved tokens, then rebuild the report")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_evaluate)


def _splits(text: str) -> tuple[float, float, float]:
    from midirwkv.errors import BadRequestError

    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or abs(sum(values) - 1) > 1e-6 or min(values) < 0:
        raise BadRequestError("--splits must be three fractions summing to 1", argument="--splits", value=text,
                              fix="e.g. --splits 0.9,0.05,0.05")
    return values  # type: ignore[return-value]


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``midirwkv evaluate``: run (or resume) the protocol, then write the report."""
    from midirwkv.cli_common import Progress, sample_config
    from midirwkv.errors import BadRequestError
    from midirwkv.eval import report as report_mod
    from midirwkv.eval.baselines import parse_systems
    from midirwkv.eval.protocol import EvalConfig, evaluate, rescore

    say = Progress(args.quiet, "7.1f")     # evaluations run for minutes: tenths of seconds
    if args.report_only or args.rescore:
        if args.rescore:
            rescore(args.output, data=args.data, progress=say)
        report = report_mod.rebuild(args.output, n_piano_rolls=args.piano_rolls, progress=say)
    else:
        if not args.data:
            raise BadRequestError("--data is needed to evaluate", argument="--data", value=None,
                                  fix="pass a token cache folder or MIDI folders / .tar.gz archives")
        sample = sample_config(args)
        from midirwkv.infer.import_paper import resolve_model

        model = resolve_model(args.model, args.tokenizer, progress=say)     # a .pth: converted once (cached)
        cfg = EvalConfig(data=list(args.data), output=args.output, split=args.split,
                         systems=parse_systems(args.systems), model=model, baseline_model=args.baseline_model,
                         prompts=args.prompts, bars=args.bars, context=args.context, seed=args.seed,
                         drums=args.drums, splits=_splits(args.splits), split_seed=args.split_seed,
                         min_bars=args.min_bars, min_notes=args.min_notes, sample=sample, save_midi=not args.no_midi,
                         piano_rolls=args.piano_rolls, threads=args.threads,
                         command="midirwkv " + " ".join(shlex.quote(a) for a in sys.argv[1:])
                         if sys.argv[1:2] == ["evaluate"] else None)
        report = evaluate(cfg, progress=say)
    g = report["groups"].get("pitched") or next(iter(report["groups"].values()), None)
    if g is not None:
        for system, summary in g["summary"].items():
            print(f"{system:10s} " + "  ".join(f"{m} {summary[m]['mean']:.3f}" for m in
                                               ("cp_active", "onset_f1", "gs_gap", "bits_per_note", "cp", "gs",
                                                "pche_diff")))
    print(f"report: {args.output}/report.md")
    return 0
