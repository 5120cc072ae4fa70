"""Which attention backend runs (pretrain/models/attention.py): `model.attention_backend` against what this
process can run (its device, the dtype of the weights, the installed kernels).

The rule is a pure function of those facts (`select_backend`), so it is tested on a CPU for any GPU;
`installed_kernels()` and `device_facts()` read the facts of this process.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from pretrain.errors import ConfigError

# The order `auto` tries on a GPU: a kernel the user installed, then PyTorch's own unpadded kernel, then
# the masked one whose kernel skips the blocks outside a document.
AUTO_ORDER = ("flash", "varlen", "flex")
HALF_DTYPES = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class InstalledKernels:
    """What the installed packages offer: torch's varlen attention, FlexAttention, flash-attn."""

    varlen: bool
    flex: bool
    flash: bool


@dataclass(frozen=True)
class DeviceFacts:
    """The training device: its type ("cuda" or "cpu") and, on CUDA, its compute capability."""

    type: str
    capability: tuple[int, int] | None = None


def installed_kernels() -> InstalledKernels:
    """The kernels this environment has (nothing is imported beyond a module lookup)."""

    def has(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    return InstalledKernels(
        varlen=has("torch.nn.attention.varlen"),
        flex=has("torch.nn.attention.flex_attention"),
        flash=has("flash_attn"),
    )


def device_facts(device: torch.device | str) -> DeviceFacts:
    """The DeviceFacts of `device` (a CUDA device's capability is read from the driver)."""
    device = torch.device(device)
    if device.type != "cuda":
        return DeviceFacts(device.type)
    return DeviceFacts("cuda", torch.cuda.get_device_capability(device))


def _problem(
    name: str, device: DeviceFacts, dtype: torch.dtype | None, kernels: InstalledKernels
) -> str | None:
    """Why backend `name` cannot run here (None: it can). dtype None: not known yet, not checked."""
    if name == "sdpa":
        return None
    if not getattr(kernels, name):
        return {
            "flash": "flash-attn is not installed (pip install flash-attn)",
            "varlen": f"torch {torch.__version__} has no torch.nn.attention.varlen (PyTorch >= 2.9 has it)",
            "flex": f"torch {torch.__version__} has no FlexAttention",
        }[name]
    if device.type != "cuda":
        if name == "flex":
            return "FlexAttention has no backward pass on CPU"
        return f"its kernel runs on CUDA GPUs only, and this process trains on {device.type}"
    if name in ("varlen", "flash"):
        if device.capability is not None and device.capability < (8, 0):
            return (
                f"its kernel needs a GPU of compute capability 8.0 or newer, this one is {device.capability}"
            )
        if dtype is not None and dtype not in HALF_DTYPES:
            return f"its kernel takes bf16 or fp16, and the weights are {str(dtype).removeprefix('torch.')}"
    return None


def select_backend(
    requested: str, device: DeviceFacts, dtype: torch.dtype | None, kernels: InstalledKernels
) -> tuple[str, str]:
    """(the backend that runs, why): `requested` is model.attention_backend (auto or a backend name).

    auto: sdpa off CUDA; on CUDA the first of AUTO_ORDER that can run (sdpa if none can). A forced backend
    that cannot run raises ConfigError saying why and what to set instead. dtype None (the weights' dtype
    is not known yet, before the engine casts them) skips the dtype checks: call again at the first forward.
    """
    if requested != "auto":
        problem = _problem(requested, device, dtype, kernels)
        if problem is not None:
            raise ConfigError(
                f"model.attention_backend={requested} cannot run here: {problem}; "
                "set model.attention_backend to auto (or sdpa, which runs everywhere)"
            )
        return requested, "set by model.attention_backend"
    if device.type != "cuda":
        return "sdpa", f"auto on {device.type}"
    skipped = []
    for name in AUTO_ORDER:
        problem = _problem(name, device, dtype, kernels)
        if problem is None:
            why = f"auto on CUDA{'; not ' + '; not '.join(skipped) if skipped else ''}"
            return name, why
        skipped.append(f"{name}: {problem}")
    return "sdpa", "auto on CUDA; not " + "; not ".join(skipped)
