"""Analyses that read a model's internals: lens, head ablation, pruning, subset search."""
