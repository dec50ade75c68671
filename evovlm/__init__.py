"""evovlm: evolutionary merging of LLaVA-style VLMs (language tower), on evollm's core."""

from evollm import __version__

__all__ = ["__version__"]
