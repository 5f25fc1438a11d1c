"""Load test of ``midirwkv serve``: N concurrent users each upload a song and ask for one infill.

Starts ``midirwkv serve`` as a subprocess on 127.0.0.1 (a free port, a fresh data folder), runs ``--requests``
clients at once (each its own session), and checks every answer: the job finished, its report covers
the requested bars, and the returned MIDI differs from the upload only in the requested bars of the
requested track. Prints latency percentiles (request -> job done, and -> MIDI downloaded) and exits
non-zero when any request failed, was wrong, or was dropped. Bounded: ``--requests`` <= 200 and a
``--deadline`` in seconds for the whole run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/load_server.py              # the default model
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/load_server.py --model runs/small/final   # a checkpoint
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/load_server.py --random tiny    # random weights, 2 x 64
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/load_server.py --random paper   # random weights, 12 x 384
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SONG = ROOT / "tests" / "fixtures" / "pop909" / "318.mid"


def random_model(folder: Path, shape: str) -> Path:
    """A random-weight checkpoint: ``tiny`` (2 x 64) or ``paper`` (the default 12 x 384 shape)."""
    import torch

    import midirwkv
    from midirwkv.config import ModelConfig
    from midirwkv.model.checkpoint import save_checkpoint
    from midirwkv.model.rwkv7 import RWKV7
    from midirwkv.music.vocab import Vocab

    vocab = Vocab.load()
    torch.manual_seed(0)
    if shape == "paper":
        cfg = ModelConfig(vocab_size=vocab.size)
    else:
        cfg = ModelConfig(vocab_size=vocab.size, n_layer=2, n_embd=64, head_size=32, dim_ffn=128, decay_lora=8,
                          aaa_lora=8, mv_lora=8, gate_lora=8)
    tokenizer = Path(midirwkv.__file__).parent / "assets" / "tokenizer" / "tokenizer.json"
    return save_checkpoint(folder, RWKV7(cfg).eval(), tokenizer, {"note": "random weights (load test)"})


def changed_bars(a: bytes, b: bytes, vocab) -> set[tuple[int, int]] | None:
    """(track, bar) pairs whose tokens differ; None when the bar grids differ (always wrong)."""
    from midirwkv.music.remi import encode_score, load_score

    sa, sb = encode_score(load_score(a), vocab), encode_score(load_score(b), vocab)
    if sa.bar_ticks != sb.bar_ticks:
        return None
    other = {t.index: t for t in sb.tracks}
    out = set()
    for ta in sa.tracks:
        tb = other.get(ta.index)
        for bar in range(len(ta.bars)):
            if tb is None or ta.bars[bar] != tb.bars[bar]:
                out.add((ta.index, bar))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def one_user(
    base: str, song: bytes, i: int, n_bars: int, tracks: list[int], bars: int, deadline: float
) -> dict:
    """One client: session, upload, infill, wait (server-sent events), download. Returns its record."""
    rng = random.Random(i)
    track = rng.choice(tracks)
    first = rng.randint(1, n_bars - bars + 1)
    out = {"i": i, "track": track, "first_bar": first, "last_bar": first + bars - 1, "ok": False}
    with httpx.Client(base_url=base, timeout=max(5.0, deadline - time.time())) as c:
        c.headers["X-Midirwkv-Session"] = c.post("/api/session").json()["session"]
        r = c.post("/api/uploads?filename=song.mid", content=song, headers={"Content-Type": "audio/midi"})
        r.raise_for_status()
        uid = r.json()["upload_id"]
        body = {
            "track": track,
            "first_bar": first,
            "last_bar": first + bars - 1,
            "seed": i,
            "context_bars": 8,
        }
        t0 = time.perf_counter()
        r = c.post(f"/api/uploads/{uid}/infill", json=body)
        r.raise_for_status()
        job = r.json()
        with c.stream("GET", f"/api/uploads/{uid}/jobs/{job['job_id']}/events") as events:
            for line in events.iter_lines():
                if line.startswith("data: "):
                    job = json.loads(line[6:])
        out["job_s"] = time.perf_counter() - t0
        out["status"] = job["status"]
        if job["status"] != "done":
            out["error"] = job.get("error")
            return out
        midi = c.get(job["variations"][0]["midi_url"])
        midi.raise_for_status()
        out["total_s"] = time.perf_counter() - t0
        out["midi"] = midi.content
        out["report_bars"] = [b["bar"] for b in job["variations"][0]["bars"]]
        out["seed"] = job["variations"][0]["seed"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint folder (default: the shipped default model)")
    ap.add_argument("--random", choices=("tiny", "paper"),
                    help="use random weights of this shape instead of a trained model (no default model needed)")
    ap.add_argument("--requests", type=int, default=50, help="concurrent users (1..200)")
    ap.add_argument("--bars", type=int, default=2, help="bars infilled per request")
    ap.add_argument("--song", default=str(SONG))
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--deadline", type=float, default=900.0, help="seconds for the whole run")
    args = ap.parse_args(argv)
    if not 1 <= args.requests <= 200:
        ap.error("--requests must be 1..200")
    from midirwkv.music.inspect import describe
    from midirwkv.music.vocab import Vocab

    song = Path(args.song).read_bytes()
    vocab = Vocab.load()
    info = describe(song, vocab)
    tracks = [t.index for t in info.tracks]
    if not args.random and not args.model:
        from midirwkv.infer.api import DEFAULT_MODEL_DIR

        if not DEFAULT_MODEL_DIR.is_dir():
            print(f"no default model at {DEFAULT_MODEL_DIR}: pass --model DIR (a `midirwkv train` folder) or "
                  "--random tiny|paper", file=sys.stderr)
            return 2
        print(f"using the shipped default model {DEFAULT_MODEL_DIR}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="midirwkv-load-") as tmp:
        model = str(random_model(Path(tmp) / "model", args.random)) if args.random else args.model
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [sys.executable, "-m", "midirwkv", "serve", "--host", "127.0.0.1", "--port", str(port),
                   "--data-dir", str(Path(tmp) / "data"), "--threads", str(args.threads)]
        if model:
            command += ["--model", str(model)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"
        try:
            start_deadline = time.time() + 120
            while True:
                if server.poll() is not None:
                    print(server.stderr.read().decode()[-2000:], file=sys.stderr)
                    return 2
                try:
                    if httpx.get(base + "/api/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > start_deadline:
                    print("server did not start in 120 s", file=sys.stderr)
                    return 2
                time.sleep(0.2)
            health = httpx.get(base + "/api/health").json()
            deadline = time.time() + args.deadline
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.requests) as pool:
                futures = [
                    pool.submit(one_user, base, song, i, info.n_bars, tracks, args.bars, deadline)
                    for i in range(args.requests)
                ]
                results = []
                for f in futures:
                    try:
                        results.append(f.result(timeout=max(1.0, deadline - time.time())))
                    except (
                        httpx.HTTPError,
                        TimeoutError,
                        KeyError,
                        ValueError,
                    ) as exc:  # counted as failed below
                        results.append({"ok": False, "error": repr(exc)[:300]})
            wall = time.perf_counter() - t0
        finally:
            server.terminate()
            server.wait(30)
    # check every answer
    wrong = []
    for r in results:
        if r.get("status") != "done" or "midi" not in r:
            wrong.append(r)
            continue
        want = {(r["track"], b - 1) for b in range(r["first_bar"], r["last_bar"] + 1)}
        diff = changed_bars(song, r["midi"], vocab)
        r["ok"] = (
            diff is not None
            and diff <= want
            and r["report_bars"] == list(range(r["first_bar"], r["last_bar"] + 1))
            and r["seed"] == r["i"]
        )
        if not r["ok"]:
            wrong.append(r)
    done = [r for r in results if r.get("ok")]
    job_s = [r["job_s"] for r in done]
    total_s = [r["total_s"] for r in done]
    summary = {
        "model": health["model"],
        "n_layer": health["n_layer"],
        "n_embd": health["n_embd"],
        "requests": args.requests,
        "bars_per_request": args.bars,
        "correct": len(done),
        "failed_or_wrong": len(wrong),
        "dropped": args.requests - len(results),
        "wall_s": round(wall, 2),
        "throughput_req_per_s": round(len(done) / wall, 3) if wall else None,
    }
    for name, values in (("job_s", job_s), ("total_s", total_s)):
        if values:
            summary[name] = {
                "p50": round(percentile(values, 50), 3),
                "p90": round(percentile(values, 90), 3),
                "p95": round(percentile(values, 95), 3),
                "p99": round(percentile(values, 99), 3),
                "max": round(max(values), 3),
                "mean": round(statistics.fmean(values), 3),
            }
    print(json.dumps(summary, indent=1))
    for r in wrong[:5]:
        print("problem:", {k: v for k, v in r.items() if k != "midi"}, file=sys.stderr)
    return 0 if not wrong and len(results) == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
