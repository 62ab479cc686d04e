"""Causal methods on counterfactual prompt pairs: accuracy, task lens, sublayer ablation,
activation and attribution patching, head roles and circuits."""
