"""InfillSession: the prefix-state cache.

The prompt is read once (chunked parallel prefill, flat memory at any length) up to and including
``FillBar_Start``; the state there is kept. The first bar's header and controls are fed by the loop like
every other bar's, so asking for more variations, other sampling settings or other controls for the span
costs only the tokens of the span itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import torch

from midirwkv.config import SampleConfig
from midirwkv.errors import BadRequestError
from midirwkv.infer.generate import GeneratedSpan, Generator, Grammar

PREFILL_CHUNK = 1024
"""Tokens per parallel prefill call: bounds the activations and logits held at once, whatever the prompt."""


class InfillSession:
    """Holds a model, a prompt and the state after the prompt's prefix; samples variations from it."""

    def __init__(self, model, vocab, prompt, *, is_drum: bool = False, grammar: Grammar | None = None,
                 prefill_chunk: int = PREFILL_CHUNK):
        if prefill_chunk < 1:
            raise BadRequestError("prefill_chunk must be positive", argument="prefill_chunk", value=prefill_chunk,
                                  fix="use e.g. 1024")
        self.model = model
        self.vocab = vocab
        self.prompt = prompt
        self.headers = [list(h) for h in prompt.bar_headers]
        self.controls = [list(c) for c in prompt.bar_controls]
        opening = self.headers[0] + self.controls[0]
        ids = list(prompt.ids)
        if ids[len(ids) - len(opening):] != opening or ids[len(ids) - len(opening) - 1] != vocab.fillbar_start:
            raise BadRequestError("the prompt must end with FillBar_Start, the first bar header and its controls",
                                  argument="prompt", value=ids[-len(opening) - 1:],
                                  fix="build it with music.infill.build_prompt")
        self.prefix = ids[: len(ids) - len(opening)]
        self.prefill_chunk = prefill_chunk
        self.generator = Generator(model, vocab, is_drum, grammar)
        start = time.perf_counter()
        self.state = prefill(model, self.prefix, prefill_chunk)
        self.prefill_seconds = time.perf_counter() - start

    @property
    def n_bars(self) -> int:
        """Number of bars each variation fills."""
        return len(self.headers)

    def generate(self, variations: int = 1, sample: SampleConfig | None = None, seed: int | None = None,
                 controls: Sequence[Sequence[int]] | None = None,
                 checker: Callable[[int, list[int]], int] | None = None) -> list[GeneratedSpan]:
        """Sample ``variations`` fills of the span as one batch, from the cached prefix state.

        Variation ``i`` uses seed ``seed + i`` (a random seed when ``seed`` is None), so a result is
        reproducible from its reported seed. ``controls`` replaces the control ids of every span bar.
        """
        if not isinstance(variations, int) or variations < 1:
            raise BadRequestError("variations must be a positive integer", argument="variations", value=variations,
                                  fix="use 1 or more")
        cfg = sample or SampleConfig()
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little") >> 1
        bar_controls = self.controls if controls is None else [list(c) for c in controls]
        if len(bar_controls) != self.n_bars:
            raise BadRequestError("need one control list per span bar", argument="controls", value=len(bar_controls),
                                  fix=f"give {self.n_bars} control lists")
        seeds = [seed + i for i in range(variations)]
        return self.generator.run(self.state, self.headers, bar_controls, cfg, seeds, checker)


@torch.inference_mode()
def prefill(model, ids: Sequence[int], chunk: int = PREFILL_CHUNK):
    """The batch-1 state after reading ``ids``, in parallel chunks of at most ``chunk`` tokens."""
    state = model.init_state(1)
    for lo in range(0, len(ids), chunk):
        idx = torch.tensor([list(ids[lo: lo + chunk])], dtype=torch.long)     # (1, T)
        _, state = model(idx, state=state, return_state=True)
    return state
