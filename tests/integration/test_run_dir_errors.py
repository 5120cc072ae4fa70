"""A run_dir that cannot be written, and a disk that fills up during training: one line naming the path,
exit 1, no traceback (issue 9, item 11). One rank, tiny model, a few steps."""

from __future__ import annotations

import resource
import subprocess

from tests.helpers.runs import trainer_command, worker_env, write_config


def _train(config, *, preexec_fn=None) -> subprocess.CompletedProcess:
    cmd = [*trainer_command(1), "--config", str(config)]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=worker_env(), preexec_fn=preexec_fn
    )


def test_a_run_dir_that_cannot_be_created_is_one_line_before_the_engine(tiny_shards, tmp_path):
    # A regular file where a directory of run_dir should be: NotADirectoryError even for root (chmod-based
    # read-only directories do not stop root, which CI runs as).
    (tmp_path / "taken").write_text("a file, not a directory\n")
    run_dir = tmp_path / "taken" / "run"
    result = _train(write_config(tmp_path, tiny_shards, run_dir=str(run_dir)))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mlm-train: error: run_dir={run_dir} cannot be written: "), last
    assert "Not a directory" in last and last.endswith("choose a writable run_dir"), last


def test_a_full_disk_while_training_is_one_line_naming_the_file(tiny_shards, tmp_path):
    limit = 4096  # bytes per file: config.yaml fits, metrics.jsonl outgrows it after a few steps

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    config = write_config(
        tmp_path, tiny_shards, train={"max_steps": 40, "resume": "none"}, checkpoint={"every_steps": 1000}
    )
    result = _train(config, preexec_fn=small_files)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert last.startswith(f"mlm-train: error: {metrics}: File too large; the disk is full"), last
    assert not (tmp_path / "run" / "checkpoints").exists()
