"""Model access: loading models, the one place that knows model internals (architectures, sites,
heads), scoring targets, and the vLLM backend."""
