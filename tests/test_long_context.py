"""The opt-in "target track's own bars first" token budget of ``music.infill.build_prompt`` (issue 19), on the
bundled POP909 song (3 tracks, 146 bars) and the Bach chorale, plus the paper-like tokenizer's merged tracks."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from midirwkv.errors import BadRequestError
from midirwkv.music import remi
from midirwkv.music.infill import InfillRequest, build_prompt, nearest_last
from midirwkv.music.vocab import Vocab

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "midirwkv" / "assets" / "examples"
PAPER_TOKENIZER = Path(__file__).parent / "fixtures" / "paper_tokenizer" / "tokenizer_paper_like.json"
BUDGETS = (160, 256, 400, 700, 1024, 1500, 2048, 3000, 4096, 8192)
LAYOUTS = ("target_last", "file_order")


@pytest.fixture(scope="module")
def vocab() -> Vocab:
    return Vocab.load()


@pytest.fixture(scope="module")
def pop(vocab):
    return remi.encode_score(remi.load_score(EXAMPLES / "pop909_001.mid"), vocab)


def own_request(track: int, start: int, end: int, budget: int, context: int = 10_000) -> InfillRequest:
    return InfillRequest(track=track, start=start, end=end, context_bars=context, max_prompt_tokens=budget,
                         own_bars_first=True)


def expected_ids(vocab, st, prompt, layout: str) -> list[int]:
    """The prompt rebuilt from whole bars: the target's window with its span as Infill_Bar, the others' window."""
    req = prompt.request
    (lo, hi), (olo, ohi) = prompt.window, prompt.other_window
    tracks = list(st.tracks)
    if layout == "target_last":
        others = [t for t in tracks if t.index != req.track]
        tracks = nearest_last(vocab, others, st.track(req.track), [*range(lo, req.start), *range(req.end, hi)])
        tracks += [st.track(req.track)]
    ids: list[int] = []
    for t in tracks:
        ids += [vocab.track_start, vocab.id(f"Program_{t.program}")]
        if t.index == req.track:
            for b in range(lo, req.start):
                ids += vocab.bpe(t.bars[b])
            ids += [vocab.infill_bar] * (req.end - req.start)
            for b in range(req.end, hi):
                ids += vocab.bpe(t.bars[b])
        else:
            for b in range(olo, ohi):
                ids += vocab.bpe(t.bars[b])
        ids.append(vocab.track_end)
    return ids + [vocab.fillbar_start] + prompt.bar_headers[0] + prompt.bar_controls[0]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_whole_bars_within_budget_and_the_others_inside_the_target(vocab, pop, layout):
    for track, start in ((0, 60), (2, 70), (1, 3), (2, 140)):
        for budget in BUDGETS:
            p = build_prompt(vocab, pop, own_request(track, start, start + 4, budget), layout)
            assert len(p.ids) <= budget
            (lo, hi), (olo, ohi) = p.window, p.other_window
            assert lo <= olo <= start and start + 4 <= ohi <= hi
            assert p.ids == expected_ids(vocab, pop, p, layout)        # whole bars, nothing cut inside one


def test_the_target_gets_its_bars_before_any_other_track(vocab, pop):
    start, end = 60, 64
    widths = []
    for budget in BUDGETS:
        p = build_prompt(vocab, pop, own_request(2, start, end, budget), "target_last")
        (lo, hi), (olo, ohi) = p.window, p.other_window
        shared = build_prompt(vocab, pop, InfillRequest(track=2, start=start, end=end, context_bars=10_000,
                                                        max_prompt_tokens=budget), "target_last")
        assert lo <= shared.window[0] and shared.window[1] <= hi       # never less than one shared window gives
        if (lo, hi) != (0, pop.n_bars):
            # the target still wants bars: its next wider window (one bar more on its larger side, as the rule
            # shrinks) does not fit even with the others on the span only; they get only what is left over
            wider = (lo - 1, hi) if (start - lo + 1 >= hi - end or hi == pop.n_bars) and lo > 0 else (lo, hi + 1)
            assert _target_first_length(vocab, pop, 2, start, end, *wider) > budget
        widths.append((start - lo, hi - end, start - olo, ohi - end))
    for a, b in itertools.pairwise(widths):                      # the target's window only grows with the budget
        assert a[0] <= b[0] and a[1] <= b[1]
    assert widths[-1][:2] == (start, pop.n_bars - end)                  # 8k tokens: the target's whole track ...
    assert widths[-1][2] > 0 and widths[-1][3] > 0                       # ... and the others' nearest bars


def _target_first_length(vocab, st, track, start, end, lo, hi) -> int:
    """Prompt length with the target's context bars [lo, hi) and the other tracks on the span only."""
    total = 1 + 2 + len(vocab.ids(st.track(track).controls[start].to_tokens(False)))
    for t in st.tracks:
        bars = [*range(lo, start), *range(end, hi)] if t.index == track else range(start, end)
        total += 3 + sum(len(vocab.bpe(t.bars[b])) for b in bars) + (end - start) * (t.index == track)
    return total


def test_both_sides_grow_together_until_the_file_ends(vocab, pop):
    start, end = 70, 74
    for budget in (300, 400, 600, 900):
        p = build_prompt(vocab, pop, own_request(0, start, end, budget), "target_last")
        left, right = start - p.window[0], p.window[1] - end
        assert left > 0 and right > 0 and abs(left - right) <= 1
    for budget in (2500, 3500, 5000):          # the target's whole track fits: the others grow both sides too
        p = build_prompt(vocab, pop, own_request(0, start, end, budget), "target_last")
        oleft, oright = start - p.other_window[0], p.other_window[1] - end
        assert p.window == (0, pop.n_bars) and oleft > 0 and oright > 0 and abs(oleft - oright) <= 1
    # near the file's start the left side runs out and the right side takes the rest
    p = build_prompt(vocab, pop, own_request(0, 2, 6, 2048), "target_last")
    assert p.window[0] == 0 and p.window[1] - 6 > 2


def test_context_bars_caps_the_target_and_the_others(vocab, pop):
    p = build_prompt(vocab, pop, own_request(1, 60, 64, 8192, context=8), "target_last")
    assert p.window == (52, 72) and p.other_window == (52, 72)
    assert len(p.ids) <= 8192
    # context pitches come from the target's whole window (the pitch prior reads them)
    narrow = build_prompt(vocab, pop, own_request(1, 60, 64, 300, context=8), "target_last")
    assert narrow.other_window == (60, 64) and narrow.window == (55, 69) and len(narrow.ids) <= 300
    assert len(narrow.context_pitches) > 0
    capped = build_prompt(vocab, pop, own_request(1, 60, 64, 500, context=8), "target_last")
    assert capped.window == (52, 72) and capped.other_window == (59, 66)   # 8 bars: the others get the rest


def test_default_path_is_unchanged(vocab, pop):
    for layout in LAYOUTS:
        for budget in (300, 1024, 4096):
            base = InfillRequest(track=2, start=60, end=64, context_bars=16, max_prompt_tokens=budget)
            old = build_prompt(vocab, pop, base, layout)
            off = build_prompt(vocab, pop, dataclasses.replace(base, own_bars_first=False), layout)
            assert old.ids == off.ids and old.window == off.window == old.other_window
            assert not base.own_bars_first
    # a budget that holds everything: both rules write the same prompt
    base = InfillRequest(track=0, start=60, end=64, context_bars=6, max_prompt_tokens=8192)
    assert build_prompt(vocab, pop, base).ids == build_prompt(
        vocab, pop, dataclasses.replace(base, own_bars_first=True)).ids


def test_bach_four_voices_target_then_others(vocab):
    st = remi.encode_score(remi.load_score(EXAMPLES / "bach_bwv269.mid"), vocab)
    track = st.tracks[1].index
    for budget in (200, 250, 400, 800, 1600):
        p = build_prompt(vocab, st, own_request(track, 12, 16, budget), "target_last")
        assert len(p.ids) <= budget and p.ids == expected_ids(vocab, st, p, "target_last")
        if p.other_window != (12, 16):
            assert p.window == (0, st.n_bars)


def test_merged_track_words_of_the_paper_tokenizer_fit_too():
    paper = Vocab.load(PAPER_TOKENIZER)
    st = remi.encode_score(remi.load_score(EXAMPLES / "pop909_001.mid"), paper)
    for budget in (300, 900, 2000, 5000):
        p = build_prompt(paper, st, own_request(1, 50, 54, budget), "file_order")
        (lo, hi), (olo, ohi) = p.window, p.other_window
        assert len(p.ids) <= budget and lo <= olo <= 50 and 54 <= ohi <= hi


def test_errors_are_typed(vocab, pop):
    with pytest.raises(BadRequestError) as err:
        build_prompt(vocab, pop, dataclasses.replace(own_request(0, 60, 64, 2048), own_bars_first="yes"))
    assert err.value.argument == "own_bars_first"
    with pytest.raises(BadRequestError) as err:
        build_prompt(vocab, pop, own_request(2, 60, 64, 40))
    assert err.value.argument == "max_prompt_tokens" and "at least" in err.value.fix


# ------------------------------------------------------------------------- benchmarks/long_context.py's parts


@pytest.fixture(scope="module")
def bench():
    from model_helpers import benchmark_module

    yield from benchmark_module("long_context")


@pytest.fixture(scope="module")
def examples(vocab):
    from midirwkv.eval.prompts import open_split

    return open_split([EXAMPLES], "all", vocab)


def test_long_prompts_are_pitched_binding_and_reproducible(bench, vocab, examples):
    budgets = (256, 1024)
    long_files, sizes = bench.scan_long_files(examples, vocab, max(budgets))
    pop = next(i for i in range(len(examples)) if examples.meta(i)["name"].startswith("pop909"))
    assert pop in long_files and sizes[pop] == bench.full_prompt_tokens(vocab, examples.tokens(pop)) > 1024
    records, rejected = bench.draw_long_prompts(examples, long_files, None, vocab, "target_last", budgets, seed=3,
                                                side_bars=8, spans_per_file=3)
    assert records and sum(rejected.values()) >= 0
    for r in records:
        st = examples.tokens(r["file"])
        tt = st.track(r["track"])
        assert not tt.is_drum and r["end"] - r["start"] == bench.SPAN_BARS
        assert 8 <= r["start"] and r["end"] <= st.n_bars - 8
        assert r["full_tokens"] > max(budgets) and r["min_tokens"] <= min(budgets)
    again, _ = bench.draw_long_prompts(examples, long_files, None, vocab, "target_last", budgets, seed=3,
                                       side_bars=8, spans_per_file=3)
    fewer, _ = bench.draw_long_prompts(examples, long_files, 1, vocab, "target_last", budgets, seed=3,
                                       side_bars=8, spans_per_file=3)
    assert again == records and records[:len(fewer)] == fewer


def _fills(bench, vocab, examples, with_gpt2: bool):
    """Rows of every system at budgets 300 and 1200 on one drawn prompt, tiny random models."""
    import torch
    from model_helpers import tiny_engine

    from midirwkv.config import ModelConfig, SampleConfig
    from midirwkv.eval.baselines import make_systems
    from midirwkv.eval.prompts import EvalPrompt, load_case

    engine = tiny_engine()
    sample = SampleConfig(candidates=2, max_notes_per_bar=3, max_tokens_per_bar=24, retries=0)
    baseline = None
    if with_gpt2:
        from midirwkv.model.gpt2 import GPT2Baseline

        torch.manual_seed(1)
        cfg = ModelConfig(vocab_size=vocab.size, n_layer=1, n_embd=32, head_size=16, dim_ffn=64, decay_lora=8,
                          aaa_lora=8, mv_lora=8, gate_lora=8)
        baseline = GPT2Baseline(cfg, 512).eval()
    systems = make_systems(("rwkv", "gpt2") if with_gpt2 else ("rwkv",), engine=engine, baseline=baseline,
                           sample=sample)
    budgets = (300, 1200)
    records, _ = bench.draw_long_prompts(examples, bench.scan_long_files(examples, vocab, 1200)[0], 1, vocab,
                                         engine.layout, budgets, seed=0, side_bars=8, spans_per_file=1)
    prompts = [EvalPrompt.from_dict(r) for r in records]
    rows = []
    for k, p in enumerate(prompts):
        base = load_case(examples, p, vocab)
        for s in systems:
            for b in budgets:
                rows.append(bench.run_one(s, bench.BudgetCase(prompt=p, st=base.st, vocab=vocab, budget=b), 7 + k))
    return engine, prompts, budgets, rows


def test_fills_at_each_budget_are_paired_and_summarised(bench, vocab, examples):
    from midirwkv.eval.prompts import load_case

    engine, prompts, budgets, rows = _fills(bench, vocab, examples, with_gpt2=False)
    for r in rows:
        assert r["prompt_tokens"] <= r["effective_budget"] == r["budget"]
        assert r["window"][0] <= r["other_window"][0] and r["other_window"][1] <= r["window"][1]
        assert 0 <= r["metrics"]["cp"] <= 1 and r["seconds"] > 0 and r["nll_nats"] > 0
    assert len({r["seed"] for r in rows}) == 1                               # the same seed at every budget
    units = {p.id: p.file for p in prompts}
    summary = bench.summarise(rows, [p.id for p in prompts], units, budgets, ["rwkv"])
    rw = summary["systems"]["rwkv"]
    assert rw["n_prompts"] == len(prompts) and rw["n_files"] == 1
    assert {(t["from"], t["to"]) for t in rw["tests"]} == {(300, 1200)}
    shared = [bench.shared_window_nll(engine, load_case(examples, p, vocab), b) for p in prompts for b in budgets]
    assert all(r["prompt_tokens"] <= r["budget"] and r["nll_nats"] > 0 for r in shared)
    ablation = bench.summarise_shared(shared, rows, [p.id for p in prompts], units, budgets)
    assert ablation["n_prompts"] == len(prompts) and len(ablation["tests"]) == 1


@pytest.mark.slow
def test_the_baseline_is_cut_to_its_trained_context(bench, vocab, examples):
    _, _, _, rows = _fills(bench, vocab, examples, with_gpt2=True)
    gpt = {r["budget"]: r for r in rows if r["system"] == "gpt2"}
    assert gpt[300]["effective_budget"] == 300 and gpt[300]["prompt_tokens"] <= 300
    assert gpt[1200]["effective_budget"] < 512 and gpt[1200]["prompt_tokens"] <= gpt[1200]["effective_budget"]
    assert all(0 <= r["metrics"]["cp"] <= 1 for r in gpt.values())


def test_a_rerun_with_other_model_weights_is_refused_not_resumed(bench, tmp_path):
    settings = {"data": "cache/scraped", "budgets": [1024, 2048], "model": "src/midirwkv/assets/default_model",
                "weights_sha1": "a" * 40, "baseline_model": None}
    bench.check_settings(tmp_path, settings)
    bench.check_settings(tmp_path, {**settings, "baseline_model": "runs/gpt2"})    # a baseline may join later
    for changed in ({"weights_sha1": "b" * 40}, {"budgets": [1024]}):
        with pytest.raises(BadRequestError) as err:
            bench.check_settings(tmp_path, {**settings, **changed})
        assert err.value.argument == "--output" and "rows.jsonl" in err.value.fix
    old = {k: v for k, v in settings.items() if k != "weights_sha1"}             # saved before the sha1 was kept
    (tmp_path / "settings.json").write_text(bench.dumps(old))
    with pytest.raises(BadRequestError):
        bench.check_settings(tmp_path, settings)
