"""Native CPU kernels (``kernels.c``, built at first use, called through ctypes).

- :mod:`.build`: compile, cache and load the library; the ctypes argument structures; ``MIDIRWKV_DECODE``.
- :mod:`.step`: :class:`NativeDecoder`, one decode step per call (fp32 or int8 weights).
- :mod:`.wkv`: the WKV recurrence over a prompt, without (:func:`wkv`) or with (:func:`wkv_train`) gradients.

This package imports nothing above :mod:`midirwkv.model.ops` and :mod:`midirwkv.model.state`; the torch paths
(:mod:`midirwkv.model.decode`, :mod:`midirwkv.model.wkv`) dispatch to it.
"""

from midirwkv.model.native.build import MAX_HEAD_SIZE, MODES, cache_dir, library, mode
from midirwkv.model.native.step import NativeDecoder, pack_panels, quantize_rows
from midirwkv.model.native.wkv import TRAIN_SEGMENT, wkv, wkv_train

__all__ = ["MAX_HEAD_SIZE", "MODES", "TRAIN_SEGMENT", "NativeDecoder", "cache_dir", "library", "mode",
           "pack_panels", "quantize_rows", "wkv", "wkv_train"]
