"""Benchmarks: datasets, prompts, generation, the sandbox and its test harness, evaluation, and
the targets the analyses score."""
