"""Run `python -m pretrain` and the Hugging Face recipe as processes on the same shards; read their figures.

Both sides are child processes of the benchmark with this checkout first on PYTHONPATH and no launcher
variables in their environment. Ours is the real trainer CLI, `python -m pretrain --config FILE
section.key=value...` (a shipped recipe plus the bench's overrides, or a YAML written here), measured
from its metrics.jsonl; each log starts with the command line that ran. The peer is
`python -m bench.hf_mlm`, which writes one JSON result. The model the peer builds is the one our config
describes (the same `transformers.BertConfig`, written to a file), so shape, vocabulary and dropout
cannot drift apart.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import yaml

from pretrain.runtime.distributed import LAUNCHER_VARIABLES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BenchError(RuntimeError):
    """A benchmark could not run (a side failed, inputs too small); the message says where to look."""


@dataclass
class SideResult:
    """What one side measured: non-pad tokens per second over the timed steps and its peak memory.

    memory_kind says what peak_memory_gib is ("GPU allocated" on CUDA, "RSS" on CPU); extra holds
    side-specific figures (e.g. the HF input pipeline's own rate).
    """

    tokens_per_s: float
    peak_memory_gib: float
    memory_kind: str
    extra: dict = field(default_factory=dict)


def child_env(device: str) -> dict[str, str]:
    """The environment for a benchmarked process on `device` ("cuda" or "cpu").

    This checkout first on PYTHONPATH (so the code measured is the code here), launcher variables removed
    (each side is a world of one), exactly one visible GPU on CUDA (the first of CUDA_VISIBLE_DEVICES, or
    GPU 0; the HF Trainer would otherwise wrap the model in DataParallel over every GPU) and none on CPU.
    """
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    first_gpu = (env.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
    env["CUDA_VISIBLE_DEVICES"] = first_gpu if device == "cuda" else ""
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def write_config(path: str, sections: dict) -> str:
    """Write a trainer YAML holding `sections` (nested dicts); returns `path`."""
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(sections, f, sort_keys=False)
    return path


def dotted_overrides(sections: dict, prefix: str = "") -> list[str]:
    """`section.key=value` command-line overrides for nested `sections`.

    A value is written as JSON (which the trainer's YAML parser reads back) unless it is a string YAML
    already reads as itself (paths, names), which stays bare so the command line reads like a user's.
    """
    out = []
    for key, value in sections.items():
        if isinstance(value, dict):
            out += dotted_overrides(value, f"{prefix}{key}.")
            continue
        bare = isinstance(value, str) and value and yaml.safe_load(value) == value
        out.append(f"{prefix}{key}={value if bare else json.dumps(value)}")
    return out


def load_model(config_path: str, overrides: Sequence[str] = ()):
    """(Config, model, seq_len) exactly as `python -m pretrain --config config_path overrides` builds them.

    The model lives on the meta device (shapes only: parameter counts, FLOPs and its BertConfig, no
    weights). Raises pretrain.config.ConfigError / data_pipeline.errors.DataError for bad input.
    """
    import torch

    from pretrain.config import load_config
    from pretrain.data.row_source import open_row_sources, resolve_seq_len
    from pretrain.models.registry import build_model

    cfg = load_config(config_path, overrides)
    source, _ = open_row_sources(cfg.data, seed=cfg.train.seed)
    with torch.device("meta"):
        model = build_model(
            cfg.model,
            vocab_size=source.vocab_size,
            pad_id=source.special_ids["pad"],
            rows_have_pairs=source.has_pairs,
        )
    seq_len = resolve_seq_len(cfg.data, source, max_positions=model.max_positions)
    return cfg, model, seq_len


def _run_logged(cmd: list[str], env: dict, log_path: str, what: str, timeout: float | None) -> None:
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(shlex.join(cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            code: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            code = f"timeout after {timeout:g} s"
    if code != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = "".join(f.readlines()[-25:])
        raise BenchError(f"{what} failed (exit {code}); log {log_path}, last lines:\n{tail}")


def timed_window(records: list[dict], skip: int) -> tuple[dict, dict]:
    """The step records at the end of step `skip` and at the last step (raises BenchError if missing)."""
    steps = {r["step"]: r for r in records if "loss" in r}
    if skip not in steps or not steps or max(steps) <= skip:
        raise BenchError(f"metrics.jsonl has steps {sorted(steps)}; need step {skip} and later ones")
    return steps[skip], steps[max(steps)]


def run_ours(
    config_path: str,
    overrides: Sequence[str] = (),
    *,
    skip: int,
    device: str,
    log_path: str,
    timeout: float | None = None,
) -> SideResult:
    """Run `python -m pretrain --config config_path overrides...` and return its SideResult.

    Throughput is (cumulative tokens at the last step - at step `skip`) / (wall time between those two
    metrics.jsonl records): everything a user's run spends between steps counts, warm-up does not. The
    per-step `tokens_per_s` field's median is kept in extra for comparison. Peak memory is the largest
    `memory_gpu_peak_gib` (CUDA) or `memory_rss_gib` (CPU, sampled once per step) of the records. The run
    dir (with its final checkpoint) is deleted afterwards. Raises BenchError when the trainer fails.
    """
    import pretrain.config

    cfg = pretrain.config.load_config(config_path, overrides)
    env = child_env(device)
    cmd = [sys.executable, "-m", "pretrain", "--config", config_path, *overrides]
    _run_logged(cmd, env, log_path, "python -m pretrain", timeout)
    with open(os.path.join(cfg.run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    first, last = timed_window(records, skip)
    timed = [r for r in records if "loss" in r and r["step"] > skip]
    memory_key = "memory_gpu_peak_gib" if device == "cuda" else "memory_rss_gib"
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    return SideResult(
        tokens_per_s=(last["tokens"] - first["tokens"]) / (last["time"] - first["time"]),
        peak_memory_gib=max(r[memory_key] for r in records if memory_key in r),
        memory_kind="GPU allocated" if device == "cuda" else "RSS",
        extra={
            "median_step_tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
            "timed_steps": last["step"] - first["step"],
        },
    )


def run_hf(
    cfg,
    model,
    seq_len: int,
    *,
    skip: int,
    device: str,
    workers: int,
    work_dir: str,
    log_path: str,
    timeout: float | None = None,
) -> SideResult:
    """Run the HF Trainer recipe (`python -m bench.hf_mlm`) on what `cfg` trains; returns its SideResult.

    `cfg`, `model` and `seq_len` come from `load_model`: the peer gets the same shards and row length,
    BertConfig, micro batch, step count, precision, masking probability and optimizer hyper-parameters.
    `workers` is its DataLoader worker count. Raises BenchError when it fails.
    """
    os.makedirs(work_dir, exist_ok=True)
    bert_config = os.path.join(work_dir, "bert_config.json")
    model.config.to_json_file(bert_config)
    result_path = os.path.join(work_dir, "hf_result.json")
    o, t = cfg.optim, cfg.train
    cmd = [
        sys.executable,
        "-m",
        "bench.hf_mlm",
        "--shards",
        cfg.data.path,
        "--seq-len",
        str(seq_len),
        "--bert-config",
        bert_config,
        "--precision",
        cfg.precision,
        "--batch",
        str(t.micro_batch_size),
        "--steps",
        str(t.max_steps),
        "--skip",
        str(skip),
        "--device",
        device,
        "--workers",
        str(workers),
        "--seed",
        str(t.seed),
        "--mlm-probability",
        str(cfg.masking.probability),
        "--lr",
        str(o.lr),
        "--weight-decay",
        str(o.weight_decay),
        "--betas",
        str(o.betas[0]),
        str(o.betas[1]),
        "--eps",
        str(o.eps),
        "--grad-clip",
        str(o.grad_clip),
        "--out",
        result_path,
        "--output-dir",
        os.path.join(work_dir, "hf-trainer"),
    ]
    _run_logged(cmd, child_env(device), log_path, "the HF Trainer recipe (python -m bench.hf_mlm)", timeout)
    with open(result_path, encoding="utf-8") as f:
        result = json.load(f)
    return SideResult(
        tokens_per_s=result.pop("tokens_per_s"),
        peak_memory_gib=result.pop("peak_memory_gib"),
        memory_kind=result.pop("memory_kind"),
        extra=result,
    )
