"""midirwkv: controllable multi-track MIDI bar infilling with an RWKV-7 language model."""

__version__ = "0.1.0"
