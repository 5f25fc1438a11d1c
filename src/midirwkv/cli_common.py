"""What the ``midirwkv`` subcommands share: the sampling flags (their defaults are ``SampleConfig``'s) and
the one-line progress printer."""

from __future__ import annotations

import argparse
import sys
import time

from midirwkv.config import SampleConfig


def add_sample_flags(g, pitch_prior: bool = False) -> None:
    """Sampling flags of ``infill``, ``add-track`` and ``evaluate``; the defaults are ``SampleConfig``'s."""
    d = SampleConfig()
    g.add_argument("--temperature", type=float, default=d.temperature, help=f"default {d.temperature:g}")
    g.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty,
                   help=f"default {d.repetition_penalty:g}")
    g.add_argument("--top-k", type=int, default=d.top_k, help=f"default {d.top_k} (0 = off)")
    g.add_argument("--top-p", type=float, default=d.top_p, help=f"default {d.top_p:g} (1 = off)")
    g.add_argument("--min-prob", type=float, default=d.min_prob,
                   help=f"probability floor, default {d.min_prob:g} (0 = off)")
    g.add_argument("--repetition-spare", action=argparse.BooleanOptionalAction, default=d.repetition_spare,
                   help="spare positions, pitches and durations from the repetition penalty (loops repeat them)"
                        f" (default {'on' if d.repetition_spare else 'off'})")
    if pitch_prior:
        g.add_argument("--keep-key", type=float, default=d.keep_key, metavar="S",
                       help="pull the filled notes toward the pitch classes (key) of the track's own "
                            f"context bars with strength S (default {d.keep_key:g}; 0 = off)")
        g.add_argument("--keep-register", type=float, default=d.keep_register, metavar="S",
                       help="pull the filled notes toward the pitch range (register) of the track's own "
                            f"context bars with strength S (default {d.keep_register:g}; 0 = off)")
        g.add_argument("--candidates", type=int, default=d.candidates, metavar="N",
                       help="sample N fills per variation in one batch and keep the one the model finds most "
                            f"likely (default {d.candidates}; 1 = one sample, faster)")


class Progress:
    """Timed progress lines on stderr (silent with --quiet)."""

    def __init__(self, quiet: bool, clock: str = "6.2f"):
        self.quiet = quiet
        self.clock = clock
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            sys.stderr.write(f"[{time.perf_counter() - self.t0:{self.clock}}s] {message}\n")
            sys.stderr.flush()


SAMPLE_FLAGS = ("temperature", "repetition_penalty", "top_k", "top_p", "min_prob", "control_retries",
                "keep_key", "keep_register", "repetition_spare", "candidates")
"""``SampleConfig`` fields a command may take as flags (``--top-k`` ...); the rest keep their defaults."""


def sample_config(args: argparse.Namespace) -> SampleConfig:
    """``SampleConfig`` from the sampling flags the command has (BadRequestError naming a bad one)."""
    return SampleConfig(**{name: getattr(args, name) for name in SAMPLE_FLAGS if hasattr(args, name)})
