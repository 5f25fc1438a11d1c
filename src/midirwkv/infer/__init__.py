"""Inference: sampling processors, the recurrent infilling loop, the prefix-state cache and the Python API."""

from midirwkv.infer.api import Engine, Report, infill, load_engine
from midirwkv.infer.generate import GeneratedSpan, Generator, Grammar
from midirwkv.infer.requests import Span
from midirwkv.infer.session import InfillSession, prefill
from midirwkv.infer.stream import BarEvent, LoopSession, LoopVariation, stream_infill

__all__ = ["BarEvent", "Engine", "GeneratedSpan", "Generator", "Grammar", "InfillSession", "LoopSession",
           "LoopVariation", "Report", "Span", "infill", "load_engine", "prefill", "stream_infill"]
