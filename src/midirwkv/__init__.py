"""midirwkv: controllable multi-track MIDI bar infilling with an RWKV-7 language model.

The main entry points are re-exported here (imported on first use, so ``import midirwkv`` stays light)::

    from midirwkv import infill
    score, report = infill("song.mid", track=1, bars="9-12", variations=4, seed=7)
"""

import os as _os

__version__ = "0.1.0"

# OpenMP (under torch) keeps idle worker threads spinning by default. On a machine whose cores are busy with other
# work (a DAW, a browser, a training run) the spinning threads and the working ones take turns on the cores: a
# 4-bar infill with the bundled model took 18-20 s instead of 0.9 s on the 2-core development machine while a
# training run used both cores. Passive waiting costs nothing measurable when the machine is idle. This must be
# set before torch loads OpenMP, so it is set on import; a value the user set is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_EXPORTS = {
    "infill": "midirwkv.infer.api",
    "add_track": "midirwkv.infer.api",
    "load_engine": "midirwkv.infer.api",
    "Span": "midirwkv.infer.requests",
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
