"""bench/gpu.py: the MFU denominator (peak looked up from torch.cuda.get_device_name()) and the overrides
that make each case out of the recipe."""

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


def test_overrides_reach_the_trainer_config_as_the_values_the_bench_meant(tmp_path):
    from bench.harness import dotted_overrides
    from pretrain.config import load_config

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run_dir: runs/x\ndata: {path: shards}\ntrain: {global_batch_size: 256}\n")
    sections = {
        "run_dir": str(tmp_path / "run dir"),
        "precision": "bf16",
        "data": {"path": "on", "seq_len": None},
        "train": {"global_batch_size": None, "max_steps": 7},
        "metrics": {"peak_tflops_per_device": 989.4},
    }
    cfg = load_config(str(recipe), dotted_overrides(sections))
    assert (cfg.run_dir, cfg.precision, cfg.data.path, cfg.data.seq_len) == (
        str(tmp_path / "run dir"),
        "bf16",
        "on",
        None,
    )
    assert (cfg.train.global_batch_size, cfg.train.max_steps) == (None, 7)
    assert cfg.metrics.peak_tflops_per_device == 989.4


def test_modernbert_bench_rows_pack_documents_and_mask_30_percent():
    import numpy as np

    from bench.modernbert_step import TINY_128, packed_rows

    isolated = packed_rows(TINY_128, doc_mean=40, isolated=True, seed=0)
    single = packed_rows(TINY_128, doc_mean=40, isolated=False, seed=0)
    rows, seq = TINY_128.micro_batch, TINY_128.seq_len
    assert len(single["cu_seqlens"]) == rows + 1  # one document per row
    assert len(isolated["cu_seqlens"]) - 1 > 2 * rows  # 128-token rows of 40-token documents: about 3 each
    assert len(isolated["unpad_indices"]) == rows * seq  # full rows, as full-sentence packing leaves them
    assert abs(len(isolated["masked_positions"]) / (rows * seq) - 0.3) < 0.1
    assert np.array_equal(isolated["input_ids"], single["input_ids"])  # the same tokens either way
