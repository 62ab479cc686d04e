"""Where and in which precision a stage computes (config `compute:`).

The model's weights and activations take the stage's compute dtype; statistics do not: the
readout (`Layout.logits`), losses, log-softmax, KL, entropy, head-mask gradients and the
bootstrap are computed in float32 whatever the model runs in. Attention goes through
PyTorch's SDPA kernel unless the stage reads attention patterns (then eager attention,
whose probabilities hooks can see).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from codeinterp.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# What a float32 statistic computed from a model in this dtype may differ by, relative to a
# loss of 1 nat: the self-checks compare fast paths with the model's own forward to this.
CHECK_RTOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}


@dataclass(frozen=True)
class Compute:
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    attention: str = "eager"


def resolve_device(name: str) -> str:
    """`auto`: CUDA when torch sees a device, else the CPU; `cuda` without one is an error."""
    if name == "cpu":
        return "cpu"
    available = torch.cuda.is_available()
    if name == "auto":
        return "cuda" if available else "cpu"
    if name == "cuda":
        if not available:
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ConfigError(f"compute.device: cuda, but torch {torch.__version__} ({build}) sees no CUDA device; "
                              "set compute.device: auto or cpu")
        return "cuda"
    raise ConfigError(f"compute.device: {name!r} is not auto, cpu or cuda")


def resolve(settings: dict | None) -> Compute:
    """A stage's Compute from its `compute` params ({device, dtype, attention}); None = float32 on the CPU."""
    if not settings:
        return Compute()
    dtype = settings.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ConfigError(f"compute.dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    attention = settings.get("attention", "eager")
    if attention not in ("eager", "sdpa"):
        raise ConfigError(f"compute.attention: {attention!r} is not eager or sdpa")
    return Compute(resolve_device(settings.get("device", "cpu")), DTYPES[dtype], attention)


def check_rtol(model) -> float:
    """The self-checks' tolerance for a model in its dtype."""
    return CHECK_RTOL.get(next(model.parameters()).dtype, 1e-4)


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def _move(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def place_inputs(model) -> None:
    """Move whatever reaches the model (its forward, its input embeddings) to its device, so
    that analyses building batches on the CPU run on a GPU model unchanged."""
    device = device_of(model)
    if device.type == "cpu":
        return

    def pre_hook(module, args, kwargs):
        return tuple(_move(a, device) for a in args), {k: _move(v, device) for k, v in kwargs.items()}

    model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    model.get_input_embeddings().register_forward_pre_hook(pre_hook, with_kwargs=True)
