"""The systems compared on the same prompts, and a registry to pick them by name.

- ``copy``: the n bars just before the span, each under the span bar's own header (meter);
- ``random-other``: n other bars of the same track, a seeded contiguous block that does not overlap the span,
  each under the span bar's own header (plausible music of the right track, unrelated to the span: the
  floor a model must beat to show it reads the context);
- ``rwkv``: our model with the original bars' controls (the paper's setting);
- ``rwkv-free``: our model with every control left free (no control token fed);
- ``rwkv-single``: ``rwkv`` with one sample per prompt (``candidates`` 1), to show what ranking fills adds;
- ``gpt2``: the GPT-2 baseline (``midirwkv train --arch gpt2``) on the same prompt layout, through the same
  generation loop (grammar guard, control schedule, sampling chain of ``infer.generate``) with a KV cache in
  place of the RNN state; a prompt longer than its context loses context bars (whole bars, larger side first,
  as ``music.infill.build_prompt`` shrinks it) until prompt and span fit.

Each system returns a :class:`SystemOutput`: the span as base ids per bar, plus for the models the summed NLL
(nats) of the ORIGINAL span under the model (teacher forcing, see ``EvalCase.teacher_sequence``).
``rwkv`` and ``rwkv-free`` share one prefilled prompt state per prompt (the prefix before the controls is
the same).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from midirwkv.config import SampleConfig
from midirwkv.errors import BadRequestError, GenerationError

SYSTEMS: dict[str, str] = {
    "copy": "copy the n bars before the span",
    "random-other": "n other bars of the same track (a seeded block outside the span)",
    "rwkv": "our RWKV-7 model, controls from the original bars",
    "rwkv-free": "our RWKV-7 model, controls left free",
    "rwkv-single": "our RWKV-7 model, controls from the original bars, one sample (candidates 1)",
    "gpt2": "GPT-2 baseline, same tokens, prompt and sampling, controls from the original bars",
}
"""Every system name and what it is (the report prints these)."""
REFERENCE_SYSTEM = "rwkv"
"""The system compared against each of the others in the report."""

Progress = Callable[[str], None]


@dataclass
class SystemOutput:
    """What one system produced for one prompt."""

    bars: list[list[int]]
    """Base ids per span bar, ``Bar_None TimeSig`` first."""
    nll_nats: float | None = None
    """Summed NLL (nats) of the original span's predicted tokens under the model; None: not a model."""
    nll_tokens: int = 0
    """How many tokens that NLL sums over."""
    sampled: int = 0
    """Tokens sampled."""
    seconds: float = 0.0
    """Wall time of this system on this prompt (its share of a shared prefill included)."""
    failed: str | None = None
    """Why generation failed (the span is then scored as empty bars), None when it did not."""


def _empty_bars(case) -> list[list[int]]:
    return [list(h) for h in case.headers]


# -------------------------------------------------------------------------------------------------- copy


class CopySystem:
    """The n bars before the span, pasted into it (each under the span bar's real header)."""

    name = "copy"
    model_path = None
    vocab = None

    def run(self, case, seed: int) -> SystemOutput:
        t0 = time.perf_counter()
        p = case.prompt
        sources = []
        for j in range(p.n):
            src = p.start - p.n + j
            if src < 0:                    # fewer than n bars before the span: repeat those that exist
                src = src % p.start if p.start > 0 else None
            sources.append(src)
        return SystemOutput(bars=_pasted(case, sources), seconds=time.perf_counter() - t0)


def _pasted(case, sources: list[int | None]) -> list[list[int]]:
    """Per span bar: its real header, then the body of the target track's bar ``sources[j]`` (None: empty)."""
    tt = case.track
    return [list(header) + (list(tt.bars[src][2:]) if src is not None else [])
            for header, src in zip(case.headers, sources)]


# ------------------------------------------------------------------------------------------ random-other


def other_bars(track, start: int, end: int, seed: int) -> list[int | None]:
    """The source bar of each of the ``end - start`` span bars for the ``random-other`` system.

    ``track`` is the target ``TrackTokens``. Candidates are the contiguous blocks ``[b, b + n)`` of the track
    that do not overlap the span ``[start, end)``. One is drawn uniformly (``numpy.random.default_rng(seed)``)
    from the best tier: blocks whose every bar has the span bar's meter and that hold a note, then blocks that
    hold a note, then any block. (A bar body pasted under a shorter meter loses its notes past the bar end,
    hence the meter preference.)

    Fallback when no such block exists (fewer than n bars on each side of the span): the bars outside the
    span, in order and read cyclically, so a window of n of them may jump over the span and, with fewer than
    n outside bars in all, repeat bars; the window's first bar is drawn with the same tiers. ``None`` for
    every bar when the span covers the whole track (the span is then left empty). Same arguments, same bars.
    """
    n, n_bars = end - start, len(track.bars)
    if n < 1 or start < 0 or end > n_bars:
        raise BadRequestError("the span must be 1 or more bars inside the track", argument="start, end",
                              value=(start, end, n_bars), fix=f"pass 0 <= start < end <= {n_bars}")
    rng = np.random.default_rng(seed)
    outside = [b for b in range(n_bars) if not start <= b < end]
    if not outside:
        return [None] * n
    blocks = [list(range(b, b + n)) for b in range(n_bars - n + 1) if b + n <= start or b >= end]
    if not blocks:
        blocks = [[outside[(k + j) % len(outside)] for j in range(n)] for k in range(len(outside))]
    meters = [track.bars[b][:2] for b in range(start, end)]

    def tier(block: list[int]) -> int:
        notes = any((track.controls[b].density or 0) > 0 for b in block)
        same_meter = all(track.bars[b][:2] == meters[j] for j, b in enumerate(block))
        return 2 if notes and same_meter else 1 if notes else 0

    tiers = [tier(block) for block in blocks]
    best = [block for block, t in zip(blocks, tiers) if t == max(tiers)]
    return list(best[int(rng.integers(len(best)))])


class RandomOtherSystem:
    """n other bars of the same track (:func:`other_bars`), each under the span bar's real header."""

    name = "random-other"
    model_path = None
    vocab = None

    def run(self, case, seed: int) -> SystemOutput:
        t0 = time.perf_counter()
        p = case.prompt
        sources = other_bars(case.track, p.start, p.end, seed)
        return SystemOutput(bars=_pasted(case, sources), seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------- rwkv


@torch.inference_mode()
def span_nll(model, state, seq: Sequence[int], scored: Sequence[bool]) -> tuple[float, int]:
    """Summed NLL (nats) of the scored tokens of ``seq`` read from ``state`` (after ``FillBar_Start``).

    ``state`` is an RWKV ``State`` or a :class:`KVState`; ``model`` the matching model (it is not modified).
    Token ``i`` is predicted from the output at ``i - 1``, so ``scored[0]`` must be False.
    """
    if scored and scored[0]:
        raise BadRequestError("the first token has no prediction inside the span", argument="scored",
                              value=scored[:3], fix="mark the first token (a bar header) as not scored")
    idx = torch.tensor([list(seq)], dtype=torch.long)
    logits, _ = model(idx, state=state, return_state=True)                    # (1, T, V)
    logp = torch.log_softmax(logits[0, :-1].float(), dim=-1)                  # (T-1, V)
    target = idx[0, 1:]
    mask = torch.tensor(list(scored[1:]), dtype=torch.bool)
    nll = -logp.gather(1, target[:, None])[:, 0]
    return float(nll[mask].sum()), int(mask.sum())


def _free_controls(case) -> list:
    from midirwkv.music.controls import BarControls

    return [BarControls() for _ in range(case.prompt.n)]


class RwkvSystem:
    """Our model: ``free=False`` feeds the original bars' controls, ``free=True`` none."""

    def __init__(self, engine, *, free: bool, sample: SampleConfig, model_path: str | None,
                 name: str | None = None):
        self.engine = engine
        self.vocab = engine.vocab
        self.free = free
        self.sample = sample
        self.name = name or ("rwkv-free" if free else "rwkv")
        self.model_path = model_path

    def _session(self, case):
        from midirwkv.infer.session import InfillSession
        from midirwkv.music.infill import build_prompt

        key = ("rwkv-session", id(self.engine))
        if key in case.shared:
            return case.shared[key]
        prompt = build_prompt(self.vocab, case.st, case.request(), self.engine.layout)
        tt = case.track
        session = InfillSession(self.engine.model, self.vocab, prompt, is_drum=tt.is_drum,
                                grammar=self.engine.grammar(tt.is_drum))
        case.shared[key] = session
        return session

    def run(self, case, seed: int) -> SystemOutput:
        t0 = time.perf_counter()         # the shared prefill is charged to the first system that needs it
        session = self._session(case)
        controls = _free_controls(case) if self.free else case.controls
        ctrl_ids = [self.vocab.ids(c.to_tokens(case.track.is_drum)) for c in controls]
        failed = None
        try:
            out = session.generate(1, self.sample, seed, controls=ctrl_ids)[0]
            bars, sampled = out.bars, out.sampled
        except GenerationError as exc:
            bars, sampled, failed = _empty_bars(case), 0, str(exc)
        seq, scored = case.teacher_sequence(controls, self.vocab)
        nll, n_tok = span_nll(self.engine.model, session.state, seq, scored)
        return SystemOutput(bars=bars, nll_nats=nll, nll_tokens=n_tok, sampled=sampled,
                            seconds=time.perf_counter() - t0, failed=failed)


# ------------------------------------------------------------------------------------------------- gpt2


class KVState:
    """Per-row KV caches of a GPT-2 with the interface the generation loop uses on RWKV states.

    ``rows[b]`` is a list over layers of ``(keys, values)``, each ``(1, heads, T_b, head_dim)``; rows may
    hold different lengths (the loop redoes and opens bars row by row). Methods return copies, like
    ``model.state.State``, except :meth:`put` which overwrites a row in place.
    """

    def __init__(self, rows: list[list[tuple[Tensor, Tensor]]]):
        self.rows = rows

    @property
    def batch(self) -> int:
        return len(self.rows)

    def length(self, b: int = 0) -> int:
        """Tokens cached in row ``b``."""
        layers = self.rows[b]
        return int(layers[0][0].shape[2]) if layers else 0

    def index(self, i: int) -> KVState:
        return KVState([[(k.clone(), v.clone()) for k, v in self.rows[i]]])

    def put(self, i: int, row: KVState) -> None:
        if row.batch != 1:
            raise BadRequestError("put needs a batch-1 row", argument="row.batch", value=row.batch,
                                  fix="pass state.index(j)")
        self.rows[i] = [(k.clone(), v.clone()) for k, v in row.rows[0]]

    def expand(self, batch: int) -> KVState:
        if self.batch != 1:
            raise BadRequestError("expand needs a batch-1 state", argument="state.batch", value=self.batch,
                                  fix="take one row first with state.index(i)")
        return KVState([[(k.clone(), v.clone()) for k, v in self.rows[0]] for _ in range(batch)])


class CachedGPT2:
    """A ``GPT2Baseline`` behind the RWKV interface of the generation loop (``__call__`` with a state,
    ``step``, ``init_state``), its KV cache as the state. Raises ``GenerationError`` when a row would pass
    the model's context (``n_positions``)."""

    def __init__(self, net, pad_id: int):
        self.net = net
        self.cfg = net.cfg
        self.n_positions = int(net.n_positions)
        self.pad_id = int(pad_id)

    def init_state(self, batch: int = 1) -> KVState:
        return KVState([[] for _ in range(batch)])

    def _forward_row(self, ids: Tensor, row: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, list]:
        from transformers import DynamicCache

        past = int(row[0][0].shape[2]) if row else 0
        if past + ids.shape[1] > self.n_positions:
            raise GenerationError("the GPT-2 baseline ran out of context", argument="n_positions",
                                  value=self.n_positions, fix="use fewer context bars (--context) or shorter spans")
        if row:
            cache = DynamicCache()
            for layer, (k, v) in enumerate(row):
                cache.update(k, v, layer)
            logits, new = self.net(ids, past_key_values=cache, use_cache=True)
        else:
            logits, new = self.net(ids, use_cache=True)
        return logits, [(layer.keys, layer.values) for layer in new.layers]

    @torch.inference_mode()
    def __call__(self, idx: Tensor, state: KVState | None = None, return_state: bool = False):
        """Logits ``(1, T, V)`` of ``idx`` (batch 1) read after ``state`` [, the new state]."""
        state = state if state is not None else self.init_state(1)
        if state.batch != 1 or idx.shape[0] != 1:
            raise BadRequestError("the GPT-2 adapter reads prompts at batch 1", argument="idx",
                                  value=tuple(idx.shape), fix="read one row at a time")
        logits, row = self._forward_row(idx, state.rows[0])
        return (logits, KVState([row])) if return_state else logits

    @torch.inference_mode()
    def step(self, feed: Tensor, state: KVState) -> tuple[Tensor, KVState]:
        """One token per row -> logits ``(B, V)``; rows fed padding (finished rows) are left as they are."""
        out = torch.zeros(feed.shape[0], self.cfg.vocab_size)
        rows = list(state.rows)
        for b in range(feed.shape[0]):
            if int(feed[b]) == self.pad_id:
                continue
            logits, rows[b] = self._forward_row(feed[b:b + 1, None], rows[b])
            out[b] = logits[0, -1].float()
        return out, KVState(rows)


class Gpt2System:
    """The Transformer baseline through the shared generation loop, original controls fed."""

    name = "gpt2"

    def __init__(self, net, vocab, *, sample: SampleConfig, model_path: str | None, layout: str = "file_order"):
        self.model = CachedGPT2(net, vocab.pad)
        self.layout = layout
        self.vocab = vocab
        self.sample = sample
        self.model_path = model_path
        self._grammars: dict[bool, object] = {}

    def grammar(self, is_drum: bool):
        from midirwkv.infer.generate import Grammar

        if is_drum not in self._grammars:
            self._grammars[is_drum] = Grammar.build(self.vocab, is_drum, self.model.cfg.vocab_size)
        return self._grammars[is_drum]

    def budget(self, case, seq_len: int) -> int:
        """Tokens kept for the span: its teacher sequence twice (room to sample), at least 32 per bar, and at
        most half the context; the prompt gets the rest."""
        want = max(2 * seq_len, 32 * case.prompt.n)
        return min(want, self.model.n_positions // 2)

    def run(self, case, seed: int) -> SystemOutput:
        from midirwkv.infer.generate import Generator
        from midirwkv.music.infill import build_prompt

        t0 = time.perf_counter()
        seq, scored = case.teacher_sequence(vocab=self.vocab)
        reserve = self.budget(case, len(seq))
        try:
            prompt = build_prompt(self.vocab, case.st, case.request(max_prompt_tokens=self.model.n_positions - reserve),
                                  self.layout)
        except BadRequestError as exc:
            return SystemOutput(bars=_empty_bars(case), seconds=time.perf_counter() - t0,
                                failed=f"prompt does not fit the context: {exc}")
        opening = len(prompt.bar_headers[0]) + len(prompt.bar_controls[0])
        prefix = prompt.ids[:len(prompt.ids) - opening]
        _, state = self.model(torch.tensor([prefix], dtype=torch.long), return_state=True)
        failed = None
        sampled = 0
        try:
            gen = Generator(self.model, self.vocab, case.track.is_drum, self.grammar(case.track.is_drum))
            out = gen.run(state, prompt.bar_headers, prompt.bar_controls, self.sample, [seed])[0]
            bars, sampled = out.bars, out.sampled
        except GenerationError as exc:
            bars, failed = _empty_bars(case), str(exc)
        nll = None
        n_tok = 0
        if len(prefix) + len(seq) <= self.model.n_positions:
            nll, n_tok = span_nll(self.model, state, seq, scored)
        return SystemOutput(bars=bars, nll_nats=nll, nll_tokens=n_tok, sampled=sampled,
                            seconds=time.perf_counter() - t0, failed=failed)


# --------------------------------------------------------------------------------------------- registry


def _same_bytes(a, b) -> bool:
    try:
        return a is not None and b is not None and Path(a).read_bytes() == Path(b).read_bytes()
    except OSError:
        return False


def parse_systems(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"copy,rwkv"`` -> ``("copy", "rwkv")``, checked against :data:`SYSTEMS` (order kept, repeats dropped)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item not in SYSTEMS:
            raise BadRequestError("unknown system", argument="--systems", value=item,
                                  fix=f"use a comma list of {', '.join(SYSTEMS)}")
        if item not in names:
            names.append(item)
    if not names:
        raise BadRequestError("no system given", argument="--systems", value=text,
                              fix=f"use a comma list of {', '.join(SYSTEMS)}")
    return tuple(names)


def _shown(path: str | Path) -> str:
    """A model path as reports show it: relative to the working folder when inside it (reports name no path of
    the machine that wrote them), else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def make_systems(names: Sequence[str], *, model: str | None = None, baseline_model: str | None = None,
                 sample: SampleConfig | None = None, threads: int | None = None,
                 progress: Progress | None = None, engine=None, baseline=None) -> list:
    """Build the named systems. ``model`` / ``engine``: our checkpoint (None: the shipped default);
    ``baseline_model`` / ``baseline`` (a loaded ``GPT2Baseline``): needed by ``gpt2``."""
    names = parse_systems(names)
    sample = sample or SampleConfig()
    out: list = []
    if any(n.startswith("rwkv") for n in names) and engine is None:
        from midirwkv.infer.api import load_engine
        engine = load_engine(model, threads=threads, progress=progress)
    elif threads is not None:
        from midirwkv.infer.api import set_threads
        set_threads(threads)
    model_path = _shown(model) if model is not None else (_shown(engine.path) if engine is not None and engine.path
                                                          else "default")
    for name in names:
        if name == "copy":
            out.append(CopySystem())
        elif name == "random-other":
            out.append(RandomOtherSystem())
        elif name in ("rwkv", "rwkv-free"):
            out.append(RwkvSystem(engine, free=name == "rwkv-free", sample=sample, model_path=model_path))
        elif name == "rwkv-single":
            out.append(RwkvSystem(engine, free=False, sample=dataclasses.replace(sample, candidates=1),
                                  model_path=model_path, name=name))
        elif name == "gpt2":
            from midirwkv.music.infill import layout_of

            vocab = engine.vocab if engine is not None else None
            path = None
            layout = "file_order"                        # a GPT2Baseline given loaded: its meta is unknown
            if baseline is None:
                if baseline_model is None:
                    raise BadRequestError("the gpt2 system needs the baseline's folder", argument="--baseline-model",
                                          value=None, fix="pass the folder of `midirwkv train --arch gpt2`, "
                                                          "or leave gpt2 out of --systems")
                from midirwkv.model.gpt2 import is_baseline_dir, load_baseline
                from midirwkv.music.vocab import Vocab

                if not is_baseline_dir(baseline_model):
                    raise BadRequestError("not a GPT-2 baseline folder", argument="--baseline-model",
                                          value=str(baseline_model),
                                          fix="pass the folder of `midirwkv train --arch gpt2` (config.json "
                                              "says \"arch\": \"gpt2\")")
                baseline, tokenizer_path, baseline_meta = load_baseline(baseline_model)
                layout = layout_of(baseline_meta)
                path = str(baseline_model)
                if vocab is not None and _same_bytes(getattr(vocab, "path", None), tokenizer_path):
                    base_vocab = vocab                   # the same tokenizer file: skip loading it again
                else:
                    base_vocab = Vocab.load(tokenizer_path)
                if vocab is not None and base_vocab.size != vocab.size:
                    raise BadRequestError("the baseline was trained with another tokenizer than our model",
                                          argument="--baseline-model", value=(base_vocab.size, vocab.size),
                                          fix="train both on the same tokenizer (same --tokenizer)")
                vocab = base_vocab
            elif vocab is None:
                from midirwkv.music.vocab import Vocab
                vocab = Vocab.load()
            out.append(Gpt2System(baseline.eval(), vocab, sample=sample, model_path=path or "given", layout=layout))
    return out
