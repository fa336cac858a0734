"""prunereg: a declarative benchmark and result registry for LLM pruning methods."""

__version__ = "0.1.0"
