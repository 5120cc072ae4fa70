"""bench/gpu.py's MFU denominator: the peak is looked up from what torch.cuda.get_device_name() returns."""

from __future__ import annotations

import pytest

from bench.gpu import peak_tflops_for


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),  # SXM
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.1),  # not L40's or L4's
        ("NVIDIA L4", 121.0),
        ("Tesla T4", None),  # unknown: MFU is reported as n/a unless --peak-tflops is given
    ],
)
def test_peak_from_the_device_name(name, peak):
    assert peak_tflops_for(name) == peak
