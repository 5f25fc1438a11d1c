"""Live loop latency: time to the first bar and time per variation from the cached prompt state (issue 20).

Usage:
    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_loop.py [--model DIR]
        [--file F.mid] [--track T] [--bars 17-20] [--context 16] [--variations 12] [--threads 1]
        [--skip-default] [--skip-paper] [--paper-fp32] [--no-http] [--out reports/live]

A loop (``infer.stream.LoopSession``, what ``POST /api/uploads/{id}/loops/{loop}/next`` runs) reads the
prompt once, then samples one variation of the span per pass. For the default model (or --model) and for
the paper-size architecture with random weights (12 x 384, vocab 16,000; int8 decode, and fp32 with
--paper-fp32) it measures, over ``--variations`` passes after one warm-up pass: the time to the first bar,
the sampling time of a variation, and the time per variation as the server spends it (sampling, splice into
the song, MIDI bytes and the per-bar control report). A pass of a 4-bar 4/4 loop lasts 16 beats
(16 * 60 / BPM s); the table says for 60, 90, 120, 150 and 180 BPM whether a new variation is ready every
pass (median, and every measured pass), and whether the prompt read plus the first variation fit the
one-bar lead-in (4 beats). Random weights make garbage music, but the grammar guard keeps them to bars of
notes, so the timings count the same kind of tokens (the report gives the sampled tokens per variation).
Unless --no-http, each model's loop is also run through the HTTP API of a local server (the streamed
``next/events`` route): time to the first ``bar`` event and to the ``pass`` event, as the page sees them.

Writes ``<out>/loop_report.json`` and ``<out>/loop_report.md`` (atomically) with the exact settings that
ran, the machine and its load (another job sharing the CPU is named there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from midirwkv.config import ModelConfig, SampleConfig
from midirwkv.files import atomic_path
from midirwkv.infer import api, requests
from midirwkv.infer.stream import LoopSession

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILE = ROOT / "tests" / "fixtures" / "pop909" / "318.mid"
TEMPOS = (60, 90, 120, 150, 180)
BEATS_PER_PASS = 16               # a 4-bar loop in 4/4
LEAD_IN_BEATS = 4                 # one bar of lead-in before the first pass


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")


def load_now() -> dict:
    """The 1-minute load average, the CPU count and the busiest other processes (pid, %CPU, command)."""
    one, five, _ = os.getloadavg()
    busy = []
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            state = fields[0]
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()[:100]
        except OSError:
            continue
        if state == "R" and cmd:
            busy.append(cmd)
    return {"load_1min": round(one, 2), "load_5min": round(five, 2), "cpus": os.cpu_count(), "running_others": busy}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def measure(label: str, engine: api.Engine, path: Path, track: int, bars: str, context: int, passes: int,
            sample: SampleConfig, seed: int) -> dict:
    """Prompt read, then ``passes`` variations (after one warm-up) from one LoopSession."""
    t0 = time.perf_counter()
    loop = LoopSession(path, track, bars, context=context, seed=seed, sample=sample, engine=engine)
    start_s = time.perf_counter() - t0
    warm = loop.next_variation()
    first_pass_s = start_s + warm.total_seconds            # what the lead-in must cover (prompt + pass 1)
    rows, cpu = [], []
    for _ in range(passes):
        c0 = time.process_time()                           # CPU time of this process: what an idle core needs
        rows.append(loop.next_variation())
        cpu.append(time.process_time() - c0)
    first = [v.first_bar_seconds for v in rows]
    sampling = [v.seconds for v in rows]
    total = [v.total_seconds for v in rows]
    tokens = [v.sampled for v in rows]
    notes = [len(v.notes) for v in rows]
    out = {
        "label": label,
        "prompt_tokens": loop.prompt_tokens,
        "loop_start_s": start_s,
        "prefill_s": loop.prefill_seconds,
        "first_pass_s": first_pass_s,
        "passes": passes,
        "first_bar_s": {"median": statistics.median(first), "p90": percentile(first, 0.9), "max": max(first)},
        "sampling_s": {"median": statistics.median(sampling), "p90": percentile(sampling, 0.9), "max": max(sampling)},
        "per_variation_s": {"median": statistics.median(total), "p90": percentile(total, 0.9), "max": max(total)},
        "per_variation_cpu_s": {"median": statistics.median(cpu), "p90": percentile(cpu, 0.9), "max": max(cpu)},
        "sampled_tokens": {"mean": statistics.mean(tokens), "min": min(tokens), "max": max(tokens)},
        "notes_per_variation": statistics.mean(notes),
        "ms_per_sampled_token": 1000.0 * sum(sampling) / max(1, sum(tokens)),
    }
    med, worst = out["per_variation_s"]["median"], out["per_variation_s"]["max"]
    table = []
    for bpm in TEMPOS:
        pass_s = BEATS_PER_PASS * 60.0 / bpm
        lead_s = LEAD_IN_BEATS * 60.0 / bpm
        table.append({"bpm": bpm, "pass_s": pass_s, "median_ok": med < pass_s, "every_pass_ok": worst < pass_s,
                      "lead_in_s": lead_s, "lead_in_ok": first_pass_s < lead_s})
    out["tempos"] = table
    ok = [r["bpm"] for r in table if r["median_ok"]]
    ok_all = [r["bpm"] for r in table if r["every_pass_ok"]]
    out["highest_bpm_median"] = max(ok) if ok else None
    out["highest_bpm_every_pass"] = max(ok_all) if ok_all else None
    out["break_even_bpm"] = BEATS_PER_PASS * 60.0 / med
    out["break_even_bpm_cpu"] = BEATS_PER_PASS * 60.0 / max(out["per_variation_cpu_s"]["median"], 1e-9)
    log(f"{label}: first bar {out['first_bar_s']['median'] * 1000:.0f} ms, variation "
        f"{med * 1000:.0f} ms median / {worst * 1000:.0f} ms max, ~{out['sampled_tokens']['mean']:.0f} tokens; "
        f"ready every pass up to {out['highest_bpm_median']} BPM (break-even {out['break_even_bpm']:.0f} BPM)")
    return out


def measure_http(engine: api.Engine, path: Path, track: int, bars: str, context: int, passes: int,
                 seed: int, threads: int) -> dict:
    """The same loop through the HTTP API of a local server (uvicorn in a thread of this process): time from
    the request to the first ``bar`` event and to the ``pass`` event of ``GET .../loops/{id}/next/events``."""
    import tempfile
    import threading

    import httpx
    import uvicorn

    from midirwkv.server.app import create_app

    first_bar, last_bar = requests.parse_bar_ranges(bars)[0]
    with tempfile.TemporaryDirectory(prefix="bench_loop_") as tmp:
        app = create_app(tmp, engine, threads=threads)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
                c.headers["X-Midirwkv-Session"] = c.post("/api/session").json()["session"]
                uid = c.post("/api/uploads?filename=bench.mid", content=path.read_bytes(),
                             headers={"Content-Type": "audio/midi"}).json()["upload_id"]
                t0 = time.perf_counter()
                r = c.post(f"/api/uploads/{uid}/loops", json={"track": track, "first_bar": first_bar + 1,
                                                              "last_bar": last_bar, "context_bars": context,
                                                              "seed": seed})
                r.raise_for_status()
                start_s = time.perf_counter() - t0
                url = f"/api/uploads/{uid}/loops/{r.json()['loop_id']}/next/events"
                first, whole = [], []
                for k in range(passes + 1):                   # the first pass warms up and is not counted
                    t0 = time.perf_counter()
                    got_first = None
                    with c.stream("GET", url) as resp:
                        kind = None
                        for line in resp.iter_lines():
                            if line.startswith("event: "):
                                kind = line[7:]
                            elif line.startswith("data: ") and kind == "bar" and got_first is None:
                                got_first = time.perf_counter() - t0
                            elif line.startswith("data: ") and kind == "error":
                                raise RuntimeError(line)
                    if k:
                        first.append(got_first if got_first is not None else float("nan"))
                        whole.append(time.perf_counter() - t0)
        finally:
            server.should_exit = True
            thread.join(10)
    out = {"loop_start_s": start_s,
           "first_bar_event_s": {"median": statistics.median(first), "max": max(first)},
           "pass_event_s": {"median": statistics.median(whole), "max": max(whole)}}
    log(f"  over HTTP: loop start {start_s:.3f} s, first bar event {out['first_bar_event_s']['median'] * 1000:.0f} ms, "
        f"pass event {out['pass_event_s']['median'] * 1000:.0f} ms (medians)")
    return out


def markdown(report: dict) -> str:
    lines = ["# Live loop latency (issue 20)", "",
             f"Command: `{report['command']}`", "",
             f"File: `{report['settings']['file']}`, track {report['settings']['track']}, bars "
             f"{report['settings']['bars']} (4 bars of 4/4), {report['settings']['context']} bars of context each "
             f"side; {report['settings']['variations']} passes measured per model after one warm-up pass; default "
             f"sampling settings (`SampleConfig()`); torch threads {report['settings']['threads']}, "
             f"OMP_NUM_THREADS={report['env'].get('OMP_NUM_THREADS')}.", "",
             f"Machine: {report['machine']}. Load before: {report['load_before']['load_1min']} (1 min) on "
             f"{report['load_before']['cpus']} CPUs, after: {report['load_after']['load_1min']}.", ""]
    others = sorted(set(report["load_before"]["running_others"]) | set(report["load_after"]["running_others"]))
    if report["load_before"]["load_1min"] > 1.0 or others:
        lines += ["**The machine was shared**: another job ran at the same time (the background training run and "
                  "other helpers' work), so these timings are upper bounds for an idle machine. Other running "
                  "processes seen: " + ("; ".join(f"`{o}`" for o in others) if others else "none at the two looks"
                  ) + ".", ""]
    lines += ["Random weights write far more notes per bar than a trained model (the grammar guard caps them at "
              "`max_notes_per_bar`), so the paper-size rows are pessimistic: scale them by the sampled tokens "
              "(ms per sampled token) to a trained model's count.", ""]
    lines += ["A pass of a 4-bar loop lasts 16 beats = 16 x 60 / BPM seconds; a variation is *ready every pass* "
              "when the time per variation (sampling + splice + report, what the server's `next` call costs) is "
              "below it. *Lead-in*: the loop's start (prompt read) plus its first variation, against the one bar "
              "(4 beats) of lead-in the page plays first.", ""]
    for m in report["models"]:
        lines += [f"## {m['label']}", "",
                  f"Prompt {m['prompt_tokens']} tokens; loop start (parse + prompt read) {m['loop_start_s']:.3f} s "
                  f"(prefill {m['prefill_s']:.3f} s); start + first variation {m['first_pass_s']:.3f} s; "
                  f"{m['sampled_tokens']['mean']:.0f} sampled tokens per variation "
                  f"({m['sampled_tokens']['min']}-{m['sampled_tokens']['max']}), "
                  f"{m['notes_per_variation']:.1f} notes; {m['ms_per_sampled_token']:.1f} ms per sampled token "
                  "(sampling time over sampled tokens, bar openings included).", "",
                  "| measure | median | p90 | max |", "|---|---|---|---|"]
        for key, name in (("first_bar_s", "time to first bar"), ("sampling_s", "sampling a variation"),
                          ("per_variation_s", "time per variation (server)"),
                          ("per_variation_cpu_s", "CPU time per variation (server)")):
            v = m[key]
            lines.append(f"| {name} | {v['median'] * 1000:.0f} ms | {v['p90'] * 1000:.0f} ms | {v['max'] * 1000:.0f} ms |")
        if m.get("http"):
            h = m["http"]
            lines += ["", f"Through the HTTP API (`POST .../loops`, then `GET .../loops/{{id}}/next/events` per pass, "
                          f"a local uvicorn server in the same process): loop start {h['loop_start_s']:.3f} s; first "
                          f"`bar` event {h['first_bar_event_s']['median'] * 1000:.0f} ms median "
                          f"({h['first_bar_event_s']['max'] * 1000:.0f} ms max); `pass` event "
                          f"{h['pass_event_s']['median'] * 1000:.0f} ms median ({h['pass_event_s']['max'] * 1000:.0f} "
                          "ms max)."]
        lines += ["", "| BPM | pass | ready (median) | ready (every pass) | lead-in | start + first variation in lead-in |",
                  "|---|---|---|---|---|---|"]
        for r in m["tempos"]:
            lines.append(f"| {r['bpm']} | {r['pass_s']:.2f} s | {'yes' if r['median_ok'] else 'no'} | "
                         f"{'yes' if r['every_pass_ok'] else 'no'} | {r['lead_in_s']:.2f} s | "
                         f"{'yes' if r['lead_in_ok'] else 'no'} |")
        lines += ["", f"Highest tempo of {list(TEMPOS)} with a new variation ready every pass: "
                      f"**{m['highest_bpm_median']} BPM** by the median, {m['highest_bpm_every_pass']} BPM by the "
                      f"slowest pass measured; break-even tempo at the median: {m['break_even_bpm']:.0f} BPM (by CPU time, "
                      f"i.e. on an idle core: {m['break_even_bpm_cpu']:.0f} BPM).", ""]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder (default: the shipped default model)")
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="a 4/4 MIDI file (default: POP909 318)")
    parser.add_argument("--track", type=int, default=0)
    parser.add_argument("--bars", default="17-20", help="the looped bars, 1-based inclusive (default 17-20)")
    parser.add_argument("--context", type=int, default=16)
    parser.add_argument("--variations", type=int, default=12, help="passes measured per model (after a warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-default", action="store_true", help="skip the default (trained) model")
    parser.add_argument("--skip-paper", action="store_true", help="skip the paper-size random-weight model")
    parser.add_argument("--paper-fp32", action="store_true", help="also measure the paper-size model in fp32")
    parser.add_argument("--no-http", action="store_true", help="skip the measurement through the HTTP API")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "live")
    args = parser.parse_args(argv)
    threads = api.set_threads(args.threads)
    sample = SampleConfig()
    t_start = time.perf_counter()
    report: dict = {
        "command": "python benchmarks/bench_loop.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {"file": str(args.file.relative_to(ROOT) if args.file.is_relative_to(ROOT) else args.file),
                     "track": args.track, "bars": args.bars, "context": args.context,
                     "variations": args.variations, "threads": threads, "seed": args.seed},
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MIDIRWKV_DECODE")},
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()} "
                   f"{platform.python_version()}, torch {torch.__version__}",
        "load_before": load_now(),
        "models": [],
    }
    engine = None
    if not args.skip_default or not args.skip_paper:
        try:
            engine = api.load_engine(args.model, threads=threads)
        except api.CheckpointError as exc:
            log(f"default model: not measured ({exc})")
    if engine is not None and not args.skip_default:
        engine.grammar(False), engine.grammar(True)
        n_params = sum(p.numel() for p in engine.model.parameters())
        cfg = engine.model.cfg
        report["models"].append(measure(
            f"model {engine.path.relative_to(ROOT) if engine.path.is_relative_to(ROOT) else engine.path} "
            f"({cfg.n_layer} x {cfg.n_embd}, vocab {cfg.vocab_size}, {n_params / 1e6:.1f} M parameters)",
            engine, args.file, args.track, args.bars, args.context, args.variations, sample, args.seed))
        if not args.no_http:
            report["models"][-1]["http"] = measure_http(engine, args.file, args.track, args.bars, args.context,
                                                         args.variations, args.seed, threads)
    if not args.skip_paper:
        from midirwkv.model.rwkv7 import RWKV7
        from midirwkv.music.vocab import Vocab

        vocab = engine.vocab if engine is not None else Vocab.load()
        torch.manual_seed(0)
        model = RWKV7(ModelConfig(vocab_size=max(16000, vocab.size))).eval()
        paper = api.Engine(model=model, vocab=vocab, meta=engine.meta if engine is not None else {})
        paper.grammar(False), paper.grammar(True)
        n_params = sum(p.numel() for p in model.parameters())
        shape = f"12 x 384, vocab {model.cfg.vocab_size}, {n_params / 1e6:.1f} M parameters, random weights"
        if args.paper_fp32:
            report["models"].append(measure(f"paper-size architecture ({shape}), fp32 decode", paper, args.file,
                                            args.track, args.bars, args.context, args.variations, sample, args.seed))
        model.set_decode(int8=True)
        report["models"].append(measure(f"paper-size architecture ({shape}), int8 decode", paper, args.file,
                                        args.track, args.bars, args.context, args.variations, sample, args.seed))
        if not args.no_http:
            report["models"][-1]["http"] = measure_http(paper, args.file, args.track, args.bars, args.context,
                                                        args.variations, args.seed, threads)
    report["load_after"] = load_now()
    report["wall_s"] = time.perf_counter() - t_start
    write_atomic(args.out / "loop_report.json", json.dumps(report, indent=1))
    write_atomic(args.out / "loop_report.md", markdown(report))
    log(f"wrote {args.out / 'loop_report.md'} in {report['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
