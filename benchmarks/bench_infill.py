"""Latency of bar infilling on this CPU, end to end (parse -> write), and per extra variation from the cache.

Usage:
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_infill.py [--model DIR] [--file F.mid] [--track T]
        [--bars 17-20] [--context 16] [--repeats 3] [--threads N] [--skip-paper] [--int8]

Prints, for the default model (or --model) and for the paper-size architecture with random weights
(12 x 384, vocab 16,000): the end-to-end time of a 4-bar infill with 16 bars of context, and the time of
each further variation sampled from the session's cached prompt state. Targets: < 2 s and < 1 s.
Random weights give garbage music, but the token counts follow the grammar guard and the real prompt,
so the timings are representative as long as the bars hold a similar number of notes.

``--release`` adds the paper's released model as our engine runs it: the same architecture with random weights,
read through a MidiTok 3.0.5 tokenizer file of the release's kind (its 663 base ids, BPE to 16,000 ids; pass the
real file with ``--release-tokenizer``, else one is built once from ``--release-corpus`` bars and kept in the
conversion cache), prompted in its layout (target track in place) with its bar starts folded
(``infer.import_paper``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from midirwkv.config import ModelConfig, SampleConfig
from midirwkv.errors import MidiRwkvError
from midirwkv.infer import api, requests
from midirwkv.infer.session import InfillSession

ROOT = Path(__file__).resolve().parent.parent


def default_file(tmp: Path) -> Path:
    """The bundled 4-voice chorale played twice (56 bars): a 4-track file with 16 bars each side of bars 17-20."""
    import symusic

    chorale = symusic.Score(str(ROOT / "src" / "midirwkv" / "assets" / "examples" / "bach_bwv269.mid"))
    length = max(t.end() for t in chorale.tracks if len(t.notes))
    bar = 3 * chorale.ticks_per_quarter                       # the chorale is in 3/4 throughout
    length = -(-length // bar) * bar
    twice = chorale.copy()
    for track, source in zip(twice.tracks, chorale.tracks):
        for n in source.notes:
            track.notes.append(symusic.Note(n.time + length, n.duration, n.pitch, n.velocity))
    path = tmp / "bwv269_twice.mid"
    twice.dump_midi(str(path))
    return path


def measure(label: str, engine: api.Engine, path: Path, track: int, bars: str, context: int, repeats: int,
            sample: SampleConfig) -> dict:
    """Median end-to-end infill time and median time of one extra variation from the cache."""
    end_to_end, extra, tokens, prompt_tokens = [], [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats + 1):                         # the first run warms up and is not counted
            t0 = time.perf_counter()
            score, report = api.infill(path, track=track, bars=bars, context=context, seed=r, sample=sample,
                                       engine=engine)
            api.save_score(score, Path(tmp) / "out.mid", protect=path)
            if r:
                end_to_end.append(time.perf_counter() - t0)
            tokens.append(report.variations[0].spans[0].sampled_tokens)
            prompt_tokens = report.variations[0].spans[0].prompt_tokens
    # the cache: one session, then more variations one at a time
    from midirwkv.music.infill import InfillRequest, build_prompt
    from midirwkv.music.remi import encode_score, load_score

    st = encode_score(load_score(path), engine.vocab)
    start, end = requests.parse_bar_ranges(bars)[0]
    req = InfillRequest(track=track, start=start, end=end, context_bars=context)
    prompt = build_prompt(engine.vocab, st, req)
    tt = next(t for t in st.tracks if t.index == track)
    session = InfillSession(engine.model, engine.vocab, prompt, is_drum=tt.is_drum,
                            grammar=engine.grammar(tt.is_drum))
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        out = session.generate(1, sample, seed=100 + r)
        if r:
            extra.append(time.perf_counter() - t0)
            tokens.append(out[0].sampled)
    t0 = time.perf_counter()
    session.generate(4, sample, seed=1000)
    batch4 = time.perf_counter() - t0
    e2e, var = statistics.median(end_to_end), statistics.median(extra)
    print(f"{label}: prompt {prompt_tokens} tokens, ~{statistics.mean(tokens):.0f} sampled tokens per variation")
    print(f"  end-to-end 4-bar infill (parse -> write): {e2e:.2f}s  target < 2 s  {'OK' if e2e < 2 else 'MISS'}")
    print(f"  further variation from cache:             {var:.2f}s  target < 1 s  {'OK' if var < 1 else 'MISS'}")
    print(f"  4 variations as one batch from cache:     {batch4:.2f}s")
    return {"end_to_end": e2e, "variation": var, "batch4": batch4}


def release_tokenizer(path: Path | None, corpus: Path | None, size: int = 16000, songs: int = 400) -> Path:
    """A tokenizer file of the release's kind: ``path`` itself, or one with ``size`` ids built once from the bars
    of the first ``songs`` MIDI files under ``corpus`` (kept beside the conversion cache for later runs)."""
    from midirwkv.infer.import_paper import cache_dir
    from midirwkv.music import remi
    from midirwkv.music.paper_vocab import build_paper_tokenizer, paper_words
    from midirwkv.music.vocab import Vocab

    if path is not None:
        return path
    out = cache_dir().parent / f"bench_release_tokenizer_{size}.json"
    if out.is_file():
        return out
    if corpus is None or not corpus.is_dir():
        raise SystemExit("--release needs --release-tokenizer FILE or --release-corpus DIR (MIDI files)")
    ours = Vocab.load()
    words: list[list[str]] = []
    t0 = time.perf_counter()
    for f in sorted(corpus.rglob("*.mid"))[:songs]:
        try:
            st = remi.encode_score(remi.load_score(f), ours)
        except MidiRwkvError:
            continue
        words += [[ours.name(i) for i in w] for w in paper_words(ours, st)]
    build_paper_tokenizer(out, words, size)
    print(f"built {out.name} from {len(words)} bars in {time.perf_counter() - t0:.0f}s")
    return out


def fold_overhead(vocab, steps: int = 200, repeats: int = 5) -> tuple[float, float]:
    """Median ms per decode step of the paper-size model, plain and with the release's bar starts folded
    (``infer.import_paper.fold_bar_starts``), measured interleaved on the same weights."""
    from midirwkv.infer.import_paper import fold_bar_starts
    from midirwkv.model.rwkv7 import RWKV7

    torch.manual_seed(0)
    plain = RWKV7(ModelConfig(vocab_size=vocab.size)).eval()
    torch.manual_seed(0)
    folded = fold_bar_starts(RWKV7(ModelConfig(vocab_size=vocab.size)).eval(), vocab)
    idx = torch.tensor([vocab.id("Position_0")])

    def per_step(model) -> float:
        state = model.init_state(1)
        with torch.inference_mode():
            model.step(idx, state)
            t0 = time.perf_counter()
            for _ in range(steps):
                _, state = model.step(idx, state)
        return (time.perf_counter() - t0) / steps * 1e3

    times: dict[str, list[float]] = {"plain": [], "folded": []}
    for _ in range(repeats):
        times["plain"].append(per_step(plain))
        times["folded"].append(per_step(folded))
    return statistics.median(times["plain"]), statistics.median(times["folded"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder (default: the shipped default model, if installed)")
    parser.add_argument("--file", type=Path, help="MIDI file with several tracks (default: the bundled chorale, "
                                                  "played twice: 4 tracks, 56 bars)")
    parser.add_argument("--track", type=int, default=2, help="track index (default 2, the chorale's Alto)")
    parser.add_argument("--bars", default="17-20")
    parser.add_argument("--context", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-paper", action="store_true", help="skip the paper-size random-weight model")
    parser.add_argument("--candidates", type=int, default=SampleConfig().candidates,
                        help="fills per variation, the most likely kept (default: SampleConfig's)")
    parser.add_argument("--int8", action="store_true", help="also measure the paper-size model with int8 weights")
    parser.add_argument("--release", action="store_true", help="also measure the release's tokenizer and layout")
    parser.add_argument("--release-tokenizer", type=Path, help="the release's tokenizer_with_acs.json (default: a "
                                                               "look-alike built once from --release-corpus)")
    parser.add_argument("--release-corpus", type=Path, default=ROOT / "cache" / "corpora" / "pop909",
                        help="MIDI files to learn the look-alike's BPE from (default cache/corpora/pop909)")
    args = parser.parse_args()
    threads = api.set_threads(args.threads)
    path = args.file or default_file(Path(tempfile.mkdtemp(prefix="bench_infill_")))
    sample = SampleConfig(candidates=args.candidates)
    print(f"candidates per variation {sample.candidates}")
    print(f"file {path.name}, track {args.track}, bars {args.bars}, context {args.context}, torch threads {threads}")

    engine = None
    try:
        engine = api.load_engine(args.model)
    except api.CheckpointError as exc:
        print(f"default model: not measured ({exc})")
    if engine is not None:
        engine.grammar(False), engine.grammar(True)
        n_params = sum(p.numel() for p in engine.model.parameters())
        measure(f"model {engine.path} ({n_params / 1e6:.1f} M parameters)", engine, path, args.track, args.bars,
                args.context, args.repeats, sample)

    if not args.skip_paper:
        from midirwkv.model.rwkv7 import RWKV7
        from midirwkv.music.vocab import Vocab

        vocab = engine.vocab if engine is not None else Vocab.load()
        torch.manual_seed(0)
        model = RWKV7(ModelConfig(vocab_size=max(16000, vocab.size))).eval()
        paper = api.Engine(model=model, vocab=vocab)
        paper.grammar(False), paper.grammar(True)
        n_params = sum(p.numel() for p in model.parameters())
        measure(f"paper-size architecture, random weights ({n_params / 1e6:.1f} M parameters)", paper, path,
                args.track, args.bars, args.context, args.repeats, sample)
        if args.int8:
            model.set_decode(int8=True)
            measure("paper-size architecture, random weights, int8 decode", paper, path, args.track, args.bars,
                    args.context, args.repeats, sample)

    if args.release:
        from midirwkv.infer.import_paper import RELEASE_LAYOUT, fold_bar_starts
        from midirwkv.model.rwkv7 import RWKV7
        from midirwkv.music.vocab import Vocab

        vocab = Vocab.load(release_tokenizer(args.release_tokenizer, args.release_corpus))
        torch.manual_seed(0)
        model = fold_bar_starts(RWKV7(ModelConfig(vocab_size=vocab.size)).eval(), vocab)
        release = api.Engine(model=model, vocab=vocab, meta={"train_config": {"prompt_layout": RELEASE_LAYOUT}})
        release.grammar(False), release.grammar(True)
        n_params = sum(p.numel() for p in model.parameters())
        label = f"release layout and tokenizer ({vocab.base_size} base, {vocab.size} ids), random weights"
        measure(f"{label} ({n_params / 1e6:.1f} M parameters)", release, path, args.track, args.bars, args.context,
                args.repeats, sample)
        if args.int8:
            model.set_decode(int8=True)
            measure(f"{label}, int8 decode", release, path, args.track, args.bars, args.context, args.repeats, sample)
        plain_ms, folded_ms = fold_overhead(vocab)
        print(f"  decode step, paper size: {plain_ms:.2f} ms plain, {folded_ms:.2f} ms with bar starts folded")


if __name__ == "__main__":
    main()
