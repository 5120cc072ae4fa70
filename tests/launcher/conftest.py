"""Small training configs on disk for launcher tests (the trainer's loader validates them: data.path set)."""

from pathlib import Path

import pytest
import yaml


@pytest.fixture
def write_config(tmp_path):
    """Write a YAML config with the given train keys; returns its path."""

    def write(name: str = "cfg.yaml", **train) -> Path:
        path = tmp_path / name
        data = {
            "run_dir": str(tmp_path / "run"),
            "data": {"path": str(tmp_path / "shards")},
            "train": {"micro_batch_size": 4, "grad_accum_steps": 2, **train},
        }
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return path

    return write
