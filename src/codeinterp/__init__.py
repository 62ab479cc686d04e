"""Mechanistic interpretability of code-generating language models."""

__version__ = "0.1.0"
