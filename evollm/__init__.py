"""evollm: evolutionary model merging for LLMs (the core, shared with evovlm)."""

__version__ = "0.1.0"
