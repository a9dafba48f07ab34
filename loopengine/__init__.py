"""loopengine: one safe, baseline-aware optimization iteration per call."""

__version__ = "0.1.0"
