"""Time the server's upload of a long song: ``POST /api/uploads`` of a 10,000-bar, 4-track file (320,000 notes,
made with the browser tests' song builder), median of 3 in one process.

    OMP_NUM_THREADS=1 python benchmarks/bench_upload.py

Measured on the shared 2-core machine (1 thread; run against the commit before and after the upload kept its
first encoding, alternating, twice): median 2.34 / 2.45 s before, 1.55 / 1.50 s after.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MIDIRWKV_MAX_BARS", "12000")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from fastapi.testclient import TestClient
from test_page_real_songs import make_song

from midirwkv.infer.api import load_engine
from midirwkv.server.app import create_app


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    data = make_song(tmp / "huge.mid", 10_000, [0, 33, 48, -1], per_bar=8).read_bytes()
    app = create_app(tmp / "data", load_engine(None, threads=1))
    times = []
    with TestClient(app, base_url="http://127.0.0.1") as client:
        token = client.post("/api/session").json()["session"]
        for _ in range(3):
            start = time.perf_counter()
            r = client.post("/api/uploads?filename=huge.mid", content=data,
                            headers={"X-Midirwkv-Session": token, "Content-Type": "audio/midi"})
            times.append(time.perf_counter() - start)
            r.raise_for_status()
    print(f"upload of {len(data)} bytes: {[round(t, 2) for t in times]} s, median {statistics.median(times):.2f} s")


if __name__ == "__main__":
    main()
