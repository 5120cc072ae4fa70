"""Which attention backend runs: `select_backend`'s rule for any device, dtype and installed kernels (a
pure function, so GPU cases are tested here on a CPU), and the facts this process reads of itself."""

from __future__ import annotations

import pytest
import torch

from pretrain.config import ConfigError
from pretrain.models.attention_select import DeviceFacts, InstalledKernels, installed_kernels, select_backend

H100 = DeviceFacts("cuda", (9, 0))
V100 = DeviceFacts("cuda", (7, 0))
CPU = DeviceFacts("cpu")
EVERYTHING = InstalledKernels(varlen=True, flex=True, flash=True)
TORCH_ONLY = InstalledKernels(varlen=True, flex=True, flash=False)
OLD_TORCH = InstalledKernels(varlen=False, flex=True, flash=False)
NOTHING = InstalledKernels(varlen=False, flex=False, flash=False)


@pytest.mark.parametrize(
    ("device", "dtype", "kernels", "expected"),
    [
        (H100, torch.bfloat16, EVERYTHING, "flash"),  # what the user installed first
        (H100, torch.bfloat16, TORCH_ONLY, "varlen"),
        (H100, None, TORCH_ONLY, "varlen"),  # dtype not known yet: not held against it
        (H100, torch.float32, EVERYTHING, "flex"),  # the unpadded kernels take half precision only
        (H100, torch.bfloat16, OLD_TORCH, "flex"),
        (V100, torch.float16, EVERYTHING, "flex"),  # flash kernels need compute capability 8.0
        (H100, torch.bfloat16, NOTHING, "sdpa"),
        (CPU, torch.float32, EVERYTHING, "sdpa"),
        (CPU, torch.bfloat16, EVERYTHING, "sdpa"),
    ],
)
def test_auto_picks_the_fastest_backend_that_can_run(device, dtype, kernels, expected):
    name, why = select_backend("auto", device, dtype, kernels)
    assert name == expected
    assert why.startswith("auto on")


def test_auto_says_why_it_passed_the_faster_ones_over():
    name, why = select_backend("auto", H100, torch.float32, TORCH_ONLY)
    assert name == "flex"
    assert "flash: flash-attn is not installed" in why and "varlen: its kernel takes bf16 or fp16" in why


@pytest.mark.parametrize(
    ("requested", "device", "dtype", "kernels", "reason"),
    [
        (
            "flash",
            H100,
            torch.bfloat16,
            TORCH_ONLY,
            r"flash-attn is not installed \(pip install flash-attn\)",
        ),
        (
            "varlen",
            CPU,
            None,
            EVERYTHING,
            "its kernel runs on CUDA GPUs only, and this process trains on cpu",
        ),
        ("flex", CPU, None, EVERYTHING, "FlexAttention has no backward pass on CPU"),
        (
            "varlen",
            H100,
            None,
            OLD_TORCH,
            r"torch \S+ has no torch.nn.attention.varlen \(PyTorch >= 2.9 has it\)",
        ),
        (
            "varlen",
            H100,
            torch.float32,
            EVERYTHING,
            "its kernel takes bf16 or fp16, and the weights are float32",
        ),
        (
            "flash",
            V100,
            torch.float16,
            EVERYTHING,
            r"its kernel needs a GPU of compute capability 8.0 or newer, this one is \(7, 0\)",
        ),
    ],
)
def test_a_forced_backend_that_cannot_run_is_refused_with_the_reason(
    requested, device, dtype, kernels, reason
):
    with pytest.raises(
        ConfigError, match=rf"model.attention_backend={requested} cannot run here: {reason}; set"
    ):
        select_backend(requested, device, dtype, kernels)


@pytest.mark.parametrize("requested", ["sdpa", "flex", "varlen", "flash"])
def test_a_forced_backend_that_can_run_is_taken(requested):
    assert select_backend(requested, H100, torch.bfloat16, EVERYTHING) == (
        requested,
        "set by model.attention_backend",
    )


def test_this_cpu_process_runs_sdpa_and_refuses_the_gpu_backends_at_build():
    from pretrain.models.modernbert.config import ModernBertModelConfig
    from pretrain.models.modernbert.model import build_model

    kernels = installed_kernels()
    version = tuple(int(part) for part in torch.__version__.split(".")[:2])
    assert kernels.flex and kernels.varlen == (version >= (2, 9))  # torch 2.9 added varlen_attn
    if torch.cuda.is_available():
        pytest.skip("a CPU process's choice")
    model = build_model(
        ModernBertModelConfig(preset="tiny", compile=False), vocab_size=50, pad_id=0, rows_have_pairs=False
    )
    assert select_backend(model.requested_backend, CPU, None, kernels)[0] == "sdpa"
    for forced in ("varlen", "flex"):
        with pytest.raises(ConfigError, match=f"attention_backend={forced} cannot run here"):
            build_model(
                ModernBertModelConfig(preset="tiny", attention_backend=forced),
                vocab_size=50,
                pad_id=0,
                rows_have_pairs=False,
            )
