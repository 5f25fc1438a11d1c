"""Data layer: corpus preparation (``corpora``) and the memory-mapped token cache (``dataset``).

``dataset`` needs torch; it is imported on first use of one of its names.
"""

from __future__ import annotations

from typing import Any

from midirwkv.data.corpora import (
    BytesSource,
    PrepareReport,
    Source,
    gigamidi_source,
    load_gigamidi,
    prepare_corpus,
)

_DATASET_NAMES = ("Batch", "Collator", "SampleDataset", "TokenCache", "collate")


def __getattr__(name: str) -> Any:
    if name in _DATASET_NAMES:
        from midirwkv.data import dataset
        return getattr(dataset, name)
    raise AttributeError(f"module 'midirwkv.data' has no attribute {name!r}")


__all__ = ["Batch", "BytesSource", "Collator", "PrepareReport", "SampleDataset", "Source", "TokenCache", "collate",
           "gigamidi_source", "load_gigamidi", "prepare_corpus"]
