"""``midirwkv tune-state`` and ``midirwkv tune-lora``: style adaptation commands."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the ``midirwkv`` parser."""
