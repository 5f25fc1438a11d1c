"""Fuzz loading, encoding and the infill API with N seeded cases; count outcomes and write a report.

Each case (``tests/fuzz_midi.py``: mutated real files and generated files with extreme values) runs in a
worker process watched by this one: a case still running after ``--timeout`` seconds is a hang (the worker is
killed and a fresh one goes on with the next case). Every case ends as ``ok``, a typed error (a
``MidiRwkvError`` subclass, counted per class and stage), ``untyped`` (any other exception, or a broken
invariant of a successful infill) or ``hang``. The bytes of every untyped or hanging case are saved beside
the report for replay; ``--case I`` runs one case in this process and prints its traceback.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fuzz.py --cases 10000 --seed 1 \\
        --report reports/fuzz/fuzz_report.md
    .venv/bin/python benchmarks/fuzz.py --seed 1 --case 4711          # replay one case

The infill runs use a tiny random-weight model (2 x 64, the test fixture's), so a case costs milliseconds
to a few seconds. Limits are the ones in force (``MIDIRWKV_MAX_*``, default ``ScoreLimits()``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzz_midi import MUTATORS, make_case, run_case, seed_files


def _engine(folder: Path):
    from conftest import make_tiny_model

    from midirwkv.infer.api import load_engine

    return load_engine(make_tiny_model(folder / "model"), threads=1)


def worker(seed: int, with_infill: bool) -> None:
    """Read case indices on stdin, write one JSON outcome per line on stdout."""
    from midirwkv.music.vocab import Vocab

    vocab = Vocab.load()
    pool = seed_files()
    with tempfile.TemporaryDirectory() as tmp:
        engine = _engine(Path(tmp)) if with_infill else None
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            index = int(line)
            case = make_case(seed, index, pool)
            out = run_case(case, vocab, engine)
            print(json.dumps({"index": index, "label": case.label, "size": len(case.data), "key": out.key,
                              "status": out.status, "message": out.message, "trace": out.trace,
                              "seconds": out.seconds, "stages": out.stages}), flush=True)


class Worker:
    """A worker subprocess and its pipes."""

    def __init__(self, seed: int, with_infill: bool):
        cmd = [sys.executable, __file__, "--worker", "--seed", str(seed)] + ([] if with_infill else ["--no-infill"])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        first = self._read(120.0)
        if first is None or not first.get("ready"):
            raise RuntimeError("the fuzz worker did not start")

    def _read(self, timeout: float) -> dict | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def run(self, index: int, timeout: float) -> dict | str:
        """The outcome of one case, or "hang" when it ran past ``timeout``, or "crash" when the worker died."""
        try:
            self.proc.stdin.write(f"{index}\n")
            self.proc.stdin.flush()
            out = self._read(timeout)
        except (BrokenPipeError, ValueError):
            out = None
        if out is not None:
            return out
        return "crash" if self.proc.poll() is not None else "hang"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=1000, help="number of cases (default 1000)")
    ap.add_argument("--start", type=int, default=0, help="first case index (default 0)")
    ap.add_argument("--seed", type=int, default=0, help="run seed: with the index it fixes each case")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds after which a case is a hang")
    ap.add_argument("--no-infill", action="store_true", help="load and encode only")
    ap.add_argument("--report", type=Path, help="write a Markdown report here (and failing cases beside it)")
    ap.add_argument("--case", type=int, help="run one case here and print its outcome and traceback")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.seed, not args.no_infill)
        return 0
    if args.case is not None:
        from midirwkv.music.vocab import Vocab

        with tempfile.TemporaryDirectory() as tmp:
            case = make_case(args.seed, args.case)
            out = run_case(case, Vocab.load(), None if args.no_infill else _engine(Path(tmp)))
        print(f"case {args.case} ({case.label}, {len(case.data)} bytes): {out.key} in {out.seconds:.3f}s")
        print(out.message)
        print(out.trace)
        return 0 if out.status != "untyped" else 1
    return run(args)


def run(args: argparse.Namespace) -> int:
    counts: collections.Counter = collections.Counter()
    messages: collections.Counter = collections.Counter()
    by_label: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures: list[dict] = []
    times: list[float] = []
    slowest: list[tuple[float, int, str, str]] = []
    t0 = time.time()
    w = Worker(args.seed, not args.no_infill)
    try:
        for index in range(args.start, args.start + args.cases):
            out = w.run(index, args.timeout)
            if isinstance(out, str):      # a hang, or a crash of the worker process (a segfault ...)
                code = w.proc.poll()
                w.kill()
                case = make_case(args.seed, index)
                message = (f"no answer within {args.timeout:g} s" if out == "hang"
                           else f"the worker process died (exit status {code})")
                out = {"index": index, "label": case.label, "size": len(case.data), "status": out,
                       "key": out if out == "hang" else "untyped:worker:crash", "message": message, "trace": "",
                       "seconds": args.timeout if out == "hang" else 0.0}
                w = Worker(args.seed, not args.no_infill)
            counts[out["key"]] += 1
            if out["status"] == "typed":
                messages[(out["key"], re.sub(r"\d[\d,.]*", "N", out["message"].split(" (argument")[0])[:90])] += 1
            kind = out["label"].split(":")[0] + ":" + out["label"].split(":")[1].split("+")[0]
            by_label[kind][out["status"]] += 1
            times.append(out["seconds"])
            slowest = sorted(slowest + [(out["seconds"], index, out["label"], out["key"])], reverse=True)[:5]
            if out["status"] == "crash":
                out["status"] = "untyped"
            if out["status"] in ("untyped", "hang"):
                failures.append(out)
                print(f"case {index} ({out['label']}): {out['key']}: {out['message'][:200]}", file=sys.stderr)
            done = index - args.start + 1
            if done % 500 == 0:
                print(f"{done}/{args.cases} cases, {time.time() - t0:.0f} s, untyped "
                      f"{sum(v for k, v in counts.items() if k.startswith('untyped'))}, hangs {counts['hang']}",
                      file=sys.stderr)
    finally:
        w.kill()
    wall = time.time() - t0
    summary = _summary(args, counts, messages, by_label, failures, times, slowest, wall)
    print(summary)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(summary)
        for f in failures:
            case = make_case(args.seed, f["index"])
            (args.report.parent / f"case_{args.seed}_{f['index']}.mid").write_bytes(case.data)
    bad = sum(v for k, v in counts.items() if k.startswith("untyped")) + counts["hang"]
    return 1 if bad else 0


def _summary(args, counts, messages, by_label, failures, times, slowest, wall) -> str:
    n = sum(counts.values())
    ok = counts["ok"]
    typed = {k: v for k, v in counts.items() if k.startswith("typed:")}
    untyped = {k: v for k, v in counts.items() if k.startswith("untyped:")}
    cmd = " ".join(["benchmarks/fuzz.py", *sys.argv[1:]])
    ts = sorted(times)
    limits = {var: os.environ.get(var, "default") for var in
              ("MIDIRWKV_MAX_BARS", "MIDIRWKV_MAX_NOTES", "MIDIRWKV_MAX_TRACKS", "MIDIRWKV_MAX_TICK")}
    lines = [
        "# Fuzz report: loading, encoding and the infill API",
        "",
        f"Command: `nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python {cmd}`",
        "",
        f"Seed {args.seed}, cases {args.start}..{args.start + args.cases - 1}, per-case time limit "
        f"{args.timeout:g} s, infill {'off' if args.no_infill else 'on (tiny random-weight model, 2 x 64)'}; "
        f"limits: {', '.join(f'{k}={v}' for k, v in limits.items())}. Python {platform.python_version()}, "
        f"wall time {wall / 60:.1f} min on a shared 2-core machine.",
        "",
        "## Outcomes",
        "",
        "| outcome | cases | share |",
        "|---|---:|---:|",
        f"| ok (loaded, encoded{'' if args.no_infill else ', infilled and checked'}) | {ok} | {ok / max(n, 1):.1%} |",
    ]
    for k, v in sorted(typed.items(), key=lambda kv: -kv[1]):
        _, stage, cls = k.split(":")
        lines.append(f"| typed error `{cls}` at {stage} | {v} | {v / max(n, 1):.1%} |")
    lines.append(f"| untyped error | {sum(untyped.values())} | {sum(untyped.values()) / max(n, 1):.1%} |")
    for k, v in sorted(untyped.items()):
        lines.append(f"| &nbsp; `{k}` | {v} | |")
    lines.append(f"| hang (over {args.timeout:g} s) | {counts['hang']} | {counts['hang'] / max(n, 1):.1%} |")
    lines.append(f"| **total** | **{n}** | |")
    lines += ["", "Most frequent typed errors (numbers shown as N):", "", "| error | message | cases |", "|---|---|---:|"]
    for (key, text), v in messages.most_common(12):
        lines.append(f"| `{key.split(':')[2]}` at {key.split(':')[1]} | {text} | {v} |")
    lines += ["", "## By case kind", "", "| kind | cases | ok | typed | untyped | hang |", "|---|---:|---:|---:|---:|---:|"]
    for kind in sorted(by_label):
        c = by_label[kind]
        lines.append(f"| {kind} | {sum(c.values())} | {c['ok']} | {c['typed']} | {c['untyped']} | {c['hang']} |")
    lines += [
        "",
        f"Mutations: {', '.join(MUTATORS)} (one to three stacked on a real fixture file); generated files: "
        "plain, notes / tracks / bars / tick around the limits, many meters, many tempi, chords.",
        "",
        "## Time per case",
        "",
        (f"median {ts[len(ts) // 2] * 1000:.1f} ms, p90 {ts[int(len(ts) * 0.9)] * 1000:.0f} ms, p99 "
         f"{ts[int(len(ts) * 0.99)] * 1000:.0f} ms, max {ts[-1]:.1f} s (load, encode and infill together; a case "
         "refused at load takes well under a millisecond).") if ts else "",
        "",
        "| seconds | case | kind | outcome |",
        "|---:|---:|---|---|",
    ]
    lines += [f"| {s:.2f} | {i} | {label} | {key} |" for s, i, label, key in slowest]
    lines += ["", "## Untyped errors and hangs", ""]
    if not failures:
        lines.append("None.")
    for f in failures:
        lines += [f"- case {f['index']} ({f['label']}, {f['size']} bytes): `{f['key']}`: {f['message'][:300]}",
                  f"  replay: `.venv/bin/python benchmarks/fuzz.py --seed {args.seed} --case {f['index']}`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
