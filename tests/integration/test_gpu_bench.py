"""bench/gpu.py's CPU smoke mode (`--device cpu --tiny`), so the GPU benchmark cannot rot between GPU runs:
both sides really train (our CLI and the HF Trainer, as processes), the ratio is printed, fp16 is skipped."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu.py"


def test_smoke_mode_trains_both_sides_and_prints_the_ratio(tiny_shards, tmp_path):
    # fp32 rather than the default bf16: same code path, and CPU bf16 matmuls are several times slower.
    cmd = [
        sys.executable,
        str(BENCH),
        "--device",
        "cpu",
        "--tiny",
        "--precisions",
        "fp32,fp16",
        "--shards",
        str(tiny_shards),
        "--work",
        str(tmp_path),
        "--json",
        str(tmp_path / "results.json"),
    ]
    # One thread per process, as the other integration tests run: the 2-core CI box is shared.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    text = out.stdout

    assert "== tiny-64 fp16: skipped (fp16 needs a GPU" in text
    ours = re.search(r"mlm-pretrain \(python -m pretrain\)\s+([\d,]+) tokens/s", text)
    hf = re.search(r"HF Trainer \+ BertForMaskedLM\s+([\d,]+) tokens/s", text)
    ratio = re.search(r"ratio ours / HF: ([\d.]+)x", text)
    assert ours and hf and ratio, text

    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [(r["case"], r["precision"]) for r in results] == [("tiny-64", "fp32")]
    r = results[0]
    assert r["ours"]["tokens_per_s"] > 0 and r["hf"]["tokens_per_s"] > 0
    assert r["ours"]["extra"]["timed_steps"] == r["steps"] - r["skip"]
    measured = r["ours"]["tokens_per_s"] / r["hf"]["tokens_per_s"]
    assert float(ratio.group(1)) == pytest.approx(measured, abs=0.01)
    # The peer trained the very model our config describes, with SDPA attention.
    assert r["hf"]["extra"]["parameters"] == r["parameters"]
    assert r["hf"]["extra"]["attn_implementation"] == "sdpa"
    assert r["flops_per_token"] < r["flops_per_token_6n"]  # the sparse head and no embeddings in the formula


def test_a_shards_dir_too_small_for_the_case_is_one_clear_error(tiny_shards, tmp_path):
    cmd = [
        sys.executable,
        str(BENCH),
        "--device",
        "cpu",
        "--tiny",
        "--precisions",
        "fp32",
        "--shards",
        str(tiny_shards),
        "--work",
        str(tmp_path),
        "--micro-batch",
        "100000",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert f"bench/gpu.py: error: {tiny_shards} holds" in out.stderr and "--micro-batch" in out.stderr


def test_modernbert_smoke_mode_times_isolated_and_single_document_rows(tmp_path):
    cmd = [sys.executable, str(BENCH), "--modernbert", "--device", "cpu", "--tiny", "--precisions", "fp32"]
    cmd += [
        "--compile",
        "off",
        "--doc-mean",
        "40",
        "--work",
        str(tmp_path),
        "--json",
        str(tmp_path / "mb.json"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert re.search(
        r"\| modernbert-tiny-128 fp32 \| isolated \([\d.]+ per row\) \| off \| sdpa \| [\d,]+ \|", out.stdout
    )
    assert "target (ModernBERT-base, seq 1024, bf16, isolated, one H100): >= 450,000 tokens/s" in out.stdout
    records = json.loads((tmp_path / "mb.json").read_text())["results"]
    assert [(r["isolated"], r["compiled"]) for r in records] == [(True, False), (False, False)]
    assert all(r["tokens_per_s"] > 0 and r["flops_per_token"] > 0 for r in records)
