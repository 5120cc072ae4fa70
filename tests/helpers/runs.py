"""Run the real CLIs from tests: `mlm-data`, and `python -m pretrain` on local CPU ranks.

- `mlm_data(*args)`: runs the `mlm-data` CLI, raises with its stderr when it fails.
- `build_shards(corpus, tokenizer, out, mode)`: `mlm-data build` at seq_len `SHARDS_SEQ_LEN` (64), one worker.
- `write_config(tmp_path, shards, **sections)`: a small CPU training YAML (tiny BERT, fp32, ZeRO-2)
  whose sections are updated with `sections`; returns its path.
- `run_pretrain(config, overrides=(), ranks=2, timeout=300, env=None, launcher="torchrun")`: runs
  `python -m pretrain` under torchrun (or `deepspeed --module`) with `ranks` local processes (plain
  python when ranks == 1) and returns a `PretrainRun` (returncode, output, run_dir, metrics: the parsed
  metrics.jsonl records).
- `run_pretrain_configs(configs, ranks=2, timeout=600, env=None)`: trains several configs one after
  another on ONE set of torchrun ranks (tests/integration/multi_run.py; saves the start-up per config)
  and returns a `PretrainRun` per config (its exit code and its part of the output).
- `step_trace(run_dir)`: {step: (loss, cumulative tokens, global sample indices)} of a run that set
  `debug.log_sample_indices`, the fingerprint that resume tests compare.
- `CPU_FP16`: the environment that switches on the CPU fp16 test device (pretrain/runtime/distributed.py) for
  the trainer subprocesses: `run_pretrain(config, env=CPU_FP16)` trains `precision: fp16` on CPU, with
  DeepSpeed's own fp16 optimizers and loss scaling (what an export test of an fp16 run needs too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.helpers import free_port

BIN = Path(sys.executable).parent
SHARDS_SEQ_LEN = 64
CPU_FP16 = {"MLM_TEST_CPU_FP16": "1"}


def mlm_data(*args: str) -> None:
    """Run `mlm-data *args`; raises RuntimeError with the end of its stderr if it exits non-zero."""
    result = subprocess.run([str(BIN / "mlm-data"), *args], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(
            f"mlm-data {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )


def build_shards(corpus: Path, tokenizer: Path, out: Path, mode: str) -> Path:
    """`mlm-data build` of `corpus` with `tokenizer` into `out` (seq_len 64, `mode` packing); returns out."""
    mlm_data(
        "build",
        "--input",
        str(corpus),
        "--tokenizer",
        str(tokenizer),
        "--out",
        str(out),
        "--seq-len",
        str(SHARDS_SEQ_LEN),
        "--mode",
        mode,
        "--workers",
        "1",
    )
    return out


def write_config(tmp_path: Path, shards: Path, **sections) -> Path:
    """A small CPU training config (tiny BERT, fp32, ZeRO-2, 2 x 8 sequences per rank and step).

    Keyword arguments replace or update top-level keys (dicts are merged into the section). Returns
    the YAML path; run_dir is tmp_path/run unless given.
    """
    cfg: dict = {
        "run_dir": str(tmp_path / "run"),
        "precision": "fp32",
        "data": {"path": str(shards)},
        "model": {"preset": "tiny"},
        "train": {
            "max_steps": 30,
            "micro_batch_size": 8,
            "grad_accum_steps": 2,
            "seed": 0,
            "log_every_steps": 10,
            "resume": "auto",
        },
        "optim": {"lr": 2e-3, "warmup_steps": 5, "schedule": "linear"},
        "zero": {"stage": 2},
        "checkpoint": {"every_steps": 1000},
        "eval": {"every_steps": 1000, "max_batches": 4},
        "metrics": {"tensorboard": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@dataclass
class PretrainRun:
    """What a `run_pretrain` call left: exit code, combined output, run dir and metrics.jsonl records."""

    returncode: int
    output: str
    run_dir: Path
    metrics: list[dict]

    def step_losses(self) -> dict[int, float]:
        """{step: loss} of the training records."""
        return {r["step"]: r["loss"] for r in self.metrics if "loss" in r}

    def evals(self) -> list[dict]:
        """The evaluation records, in order."""
        return [r for r in self.metrics if "eval_loss" in r]


def step_trace(run_dir: Path) -> dict[int, tuple[float, int, tuple[int, ...]]]:
    """{step: (loss, cumulative tokens, global sample indices)} from run_dir/metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["tokens"], tuple(r["samples"])) for r in records if "loss" in r}


def _metrics_of(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def worker_env(env: dict | None = None) -> dict:
    """The environment of a trainer subprocess: one OpenMP thread, quiet tokenizers, plus `env`."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}


def trainer_command(ranks: int, launcher: str = "torchrun") -> list[str]:
    """The command that starts `python -m pretrain` on `ranks` local processes: the interpreter itself for
    one rank, else torchrun (or the deepspeed launcher) on a free rendezvous port."""
    if ranks == 1:
        return [sys.executable, "-m", "pretrain"]
    if launcher == "deepspeed":
        return [
            str(BIN / "deepspeed"),
            f"--num_gpus={ranks}",
            f"--master_port={free_port()}",
            "--module",
            "pretrain",
        ]
    return [
        str(BIN / "torchrun"),
        f"--nproc-per-node={ranks}",
        f"--master-port={free_port()}",
        "-m",
        "pretrain",
    ]


def run_pretrain_configs(
    configs: list[Path], *, ranks: int = 2, timeout: float = 600, env: dict | None = None
) -> list[PretrainRun]:
    """Train `configs` one after another on one torchrun launch of `ranks` CPU processes."""
    cmd = [
        str(BIN / "torchrun"),
        f"--nproc-per-node={ranks}",
        f"--master-port={free_port()}",
        "-m",
        "tests.integration.multi_run",
        *map(str, configs),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=worker_env(env))
    output = result.stdout + result.stderr
    runs = []
    starts = [output.find(f"multi_run: start {config}\n") for config in configs] + [len(output)]
    for i, config in enumerate(configs):
        exit_marker = f"multi_run: exit {config} "
        end = output.find(exit_marker, starts[i])
        if starts[i] < 0 or end < 0:
            raise AssertionError(f"{config} did not run to its end:\n{output[-4000:]}")
        code = int(output[end + len(exit_marker) :].split("\n", 1)[0])
        run_dir = Path(yaml.safe_load(Path(config).read_text())["run_dir"])
        # up to the next config's start: the other ranks' last lines may follow rank 0's exit marker
        runs.append(PretrainRun(code, output[starts[i] : starts[i + 1]], run_dir, _metrics_of(run_dir)))
    return runs


def run_pretrain(
    config: Path,
    overrides=(),
    *,
    ranks: int = 2,
    timeout: float = 300,
    env: dict | None = None,
    launcher: str = "torchrun",
) -> PretrainRun:
    """Run `python -m pretrain --config config overrides...` on `ranks` local CPU processes."""
    cmd = [*trainer_command(ranks, launcher), "--config", str(config), *overrides]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=worker_env(env))
    run_dir = Path(yaml.safe_load(Path(config).read_text())["run_dir"])
    for item in overrides:
        if item.startswith("run_dir="):
            run_dir = Path(item.split("=", 1)[1])
    return PretrainRun(result.returncode, result.stdout + result.stderr, run_dir, _metrics_of(run_dir))
