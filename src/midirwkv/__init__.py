"""midirwkv: controllable multi-track MIDI bar infilling with an RWKV-7 language model.

The main entry points are re-exported here (imported on first use, so ``import midirwkv`` stays light)::

    from midirwkv import infill
    score, report = infill("song.mid", track=1, bars="9-12", variations=4, seed=7)
"""

__version__ = "0.1.0"

_EXPORTS = {
    "infill": "midirwkv.infer.api",
    "add_track": "midirwkv.infer.api",
    "load_engine": "midirwkv.infer.api",
    "Span": "midirwkv.infer.api",
    "SampleConfig": "midirwkv.config",
    "ModelConfig": "midirwkv.config",
    "TrainConfig": "midirwkv.config",
    "MidiRwkvError": "midirwkv.errors",
}
__all__ = ["__version__", *_EXPORTS]  # noqa: PLE0604 (the keys are strings)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'midirwkv' has no attribute {name!r}")
