"""Music-layer throughput: files/s and tokens/s for tokenising a folder, and prompt-building latency.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_music.py [FOLDER] [--limit N]

FOLDER defaults to tests/fixtures (recursively). Prompt latency is the median of ``build_prompt`` for a
4-bar span with 16 bars of context on each tokenised file (BPE off unless --tokenizer is given).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from midirwkv.errors import MidiRwkvError
from midirwkv.music.infill import InfillRequest, build_prompt
from midirwkv.music.remi import encode_score, load_score
from midirwkv.music.vocab import Vocab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=str(Path(__file__).resolve().parent.parent / "tests" / "fixtures"))
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--tokenizer", default=None, help="tokenizer JSON (with BPE) to time prompts with")
    args = parser.parse_args()
    vocab = Vocab.load(args.tokenizer)
    paths = sorted(p for p in Path(args.folder).rglob("*") if p.suffix.lower() in (".mid", ".midi"))[: args.limit]
    encoded, n_tokens, failed = [], 0, 0
    t0 = time.perf_counter()
    for p in paths:
        try:
            st = encode_score(load_score(p), vocab)
        except MidiRwkvError:
            failed += 1
            continue
        encoded.append(st)
        n_tokens += sum(len(b) for t in st.tracks for b in t.bars)
    dt = time.perf_counter() - t0
    print(f"tokenise: {len(encoded)} files ({failed} refused) in {dt:.2f}s: {len(encoded) / dt:.1f} files/s, "
          f"{n_tokens / dt:,.0f} base tokens/s")
    lat = []
    for st in encoded:
        if st.n_bars < 6:
            continue
        start = st.n_bars // 2 - 2
        req = InfillRequest(track=st.tracks[0].index, start=start, end=start + 4, context_bars=16)
        t = time.perf_counter()
        p = build_prompt(vocab, st, req)
        lat.append((time.perf_counter() - t, len(p.ids)))
    if lat:
        ms = statistics.median(x for x, _ in lat) * 1e3
        print(f"build_prompt (4 bars, 16+16 context, {vocab}): median {ms:.2f} ms over {len(lat)} files, "
              f"median prompt {statistics.median(n for _, n in lat):.0f} tokens")


if __name__ == "__main__":
    main()
