"""Helpers the browser tests share (import as ``from page_helpers import ...``; pytest puts this folder on the path)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("MIDIRWKV_BROWSER_ARTIFACTS", ROOT / "artifacts" / "browser"))
"""Where screenshots go (git-ignored; ``MIDIRWKV_BROWSER_ARTIFACTS`` moves them)."""


def shot(page, name: str) -> None:
    """Save a screenshot of the visible page as ``ARTIFACTS / name``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=False)
