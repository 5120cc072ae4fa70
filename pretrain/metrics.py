"""Training metrics on rank 0: RUN_DIR/metrics.jsonl, TensorBoard scalars, and a tqdm bar or log lines.

metrics.jsonl holds one JSON object per optimizer step (step, loss, lr, grad_norm, tokens_per_s, time,
...; a mixture's `source_samples` and `source_epochs`, mappings by source name) and one per evaluation
(step, eval_loss, eval_accuracy, eval_perplexity[, eval_pair_accuracy], time; a mixture's
`eval_loss_by_source`, ... mappings). TensorBoard gets each number of a mapping as `<tag>/<name>`.
Floats are written by `json` (the repr of the Python float: full precision, round-trips
exactly), so two runs can be compared bit for bit.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

import psutil
import torch

from data_pipeline.integrity import write_atomic

log = logging.getLogger(__name__)


def memory_stats(device: str) -> dict[str, float]:
    """Memory in GiB: peak allocated on the GPU (cuda devices) and this process's resident set size."""
    out = {"memory_rss_gib": psutil.Process().memory_info().rss / 2**30}
    if device.startswith("cuda"):
        out["memory_gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def mfu(
    tokens_per_s: float, flops_per_token: float, world_size: int, peak_tflops: float | None
) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over world_size x peak; None when no peak is configured."""
    if not peak_tflops:
        return None
    return tokens_per_s * flops_per_token / (world_size * peak_tflops * 1e12)


class MetricsLogger:
    """Writes metrics on rank 0 (every method is a no-op elsewhere).

    Takes the run dir, whether this is rank 0, max_steps (for the bar), log_every_steps (TensorBoard and
    the log line interval), whether to write TensorBoard and the step the run starts from (a resumed run
    appends to metrics.jsonl after dropping records beyond that step, so the file reads like one run).
    """

    def __init__(
        self,
        run_dir: str,
        *,
        is_main: bool,
        max_steps: int,
        log_every_steps: int,
        tensorboard: bool,
        start_step: int = 0,
    ) -> None:
        """Open metrics.jsonl (and TensorBoard) on rank 0."""
        self.is_main = is_main
        self.log_every = log_every_steps
        self._bar = None
        self._jsonl = None
        self._tb = None
        if not is_main:
            return
        path = os.path.join(run_dir, "metrics.jsonl")
        _truncate_after(path, start_step)
        self._jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=start_step + 1)
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=max_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def log_step(self, record: dict) -> None:
        """Record one optimizer step: `record` holds step, loss, lr, grad_norm, tokens_per_s, ... (floats)."""
        if not self.is_main:
            return
        record = {"step": record["step"], "time": time.time(), **record}
        self._write(record)
        step = record["step"]
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
        if step % self.log_every == 0 or step == 1:
            self._scalars("train", record)
            if self._bar is None:
                log.info(
                    "step %d loss %.4f lr %.3g grad_norm %s tokens/s %.0f",
                    step,
                    record["loss"],
                    record["lr"],
                    "n/a" if record.get("grad_norm") is None else f"{record['grad_norm']:.3f}",
                    record["tokens_per_s"],
                )

    def log_eval(self, record: dict) -> None:
        """Record one evaluation: step, eval_loss, eval_accuracy, eval_perplexity[, eval_pair_accuracy]."""
        if not self.is_main:
            return
        record = {"step": record["step"], "time": time.time(), **record}
        self._write(record)
        self._scalars("eval", record)
        message = (
            f"eval at step {record['step']}: loss {record['eval_loss']:.4f} "
            f"perplexity {record['eval_perplexity']:.2f} accuracy {record['eval_accuracy']:.4f}"
        )
        if "eval_pair_accuracy" in record:
            message += f" pair accuracy {record['eval_pair_accuracy']:.4f}"
        if self._bar is not None:
            self._bar.write(message)
        else:
            log.info(message)

    def _write(self, record: dict) -> None:
        try:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        except OSError as exc:  # a full disk: name the file (a failed write on an open file names none)
            raise OSError(exc.errno, exc.strerror, self._jsonl.name) from exc

    def _scalars(self, prefix: str, record: dict) -> None:
        if self._tb is None:
            return
        for key, value in record.items():
            if key in ("step", "time"):
                continue
            tag = f"{prefix}/{key.removeprefix('eval_')}"
            # a mapping by source name (a mixture's source_samples, eval_loss_by_source, ...): one each
            values = value.items() if isinstance(value, dict) else [(None, value)]
            for name, v in values:
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(tag if name is None else f"{tag}/{name}", v, record["step"])
        self._tb.flush()

    def close(self) -> None:
        """Flush and close the files and the bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def _parse_line(line: str) -> dict | None:
    """The record of one metrics.jsonl line; None for a line cut short by a killed process."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def read_records(path: str) -> list[dict]:
    """The records of the metrics.jsonl at `path` ([] when there is none); torn lines are skipped."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        return [r for r in map(_parse_line, f) if r is not None]


def _truncate_after(path: str, step: int) -> None:
    """Drop records with step > `step` (written after the checkpoint a resumed run starts from)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        record = _parse_line(line)
        if record is not None and record["step"] <= step:
            kept.append(line)
    if len(kept) != len(lines):
        write_atomic(path, "".join(kept))
