"""A run through phase boundaries (2 CPU ranks, ZeRO-2): batch warmup in phase 0, then at step 3 a phase
with shorter rows drawn from a 3:1 mixture, another mask rate and another batch, then by tokens a
mask-rate phase. A SIGKILL right at the step-3 boundary resumes into the right phase, bit-identical to
the uninterrupted run (losses, tokens, the rows of every step and the samples drawn per source); a decay
branch from the boundary's checkpoint continues it exactly and records where it came from."""

from __future__ import annotations

import json

import pytest

from tests.helpers.processes import kill_all, start, wait_until
from tests.helpers.runs import run_pretrain_configs, step_trace, write_config

pytestmark = pytest.mark.integration

BOUNDARY = 3
SETTINGS = {
    # phase 0: the global batch ramps 16 -> 32 (micro 8 x 2 ranks x 1..2 accumulation) over 2 steps
    "train": {"max_steps": 6, "grad_accum_steps": 2, "batch_warmup_steps": 2, "batch_warmup_start": 16},
    "optim": {"warmup_steps": 2, "schedule": "wsd", "decay_steps": 2},
    "checkpoint": {"every_steps": BOUNDARY, "keep_last": 10},
    "eval": {"every_steps": 1000, "max_batches": 2},
    "debug": {"log_sample_indices": True},
    "phases": [
        {
            "start_step": BOUNDARY,
            # the session's shards under two names, drawn 3:1 (`config` fills in the paths)
            "data": {
                "seq_len": 32,
                "path": None,
                "sources": [{"name": "web", "weight": 3}, {"name": "books"}],
            },
            "masking": {"probability": 0.3},
            "train": {"grad_accum_steps": 1},
        },
        # by tokens: rows are full (64 tokens), so ~4096 after step 3 and 512 a step after: from step 5
        {"start_tokens": 4400, "masking": {"probability": 0.05}},  # same rows: the stream continues
    ],
}


def records(run_dir) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if "loss" in r}


def committed(run_dir, step: int):
    """A condition for `wait_until`: the checkpoint of `step` is committed (`latest` names it)."""

    def check() -> bool:
        latest = run_dir / "checkpoints" / "latest"
        return latest.exists() and latest.read_text().strip() == f"step-{step:08d}"

    return check


def config(tmp_path, name, tiny_shards, **changes):
    (tmp_path / name).mkdir()
    settings = {k: {**v, **changes.get(k, {})} if isinstance(v, dict) else v for k, v in SETTINGS.items()}
    mixture = settings["phases"][0]["data"]
    sources = [{"path": str(tiny_shards), "weight": 1, **source} for source in mixture["sources"]]
    settings["phases"] = [
        {**settings["phases"][0], "data": {**mixture, "sources": sources}},
        *settings["phases"][1:],
    ]
    return write_config(tmp_path / name, tiny_shards, **settings)


def test_a_phase_boundary_resumes_bit_identically_after_a_sigkill_there(tiny_shards, tmp_path):
    killed = config(tmp_path, "killed", tiny_shards)
    proc = start(killed)
    wait_until(proc, committed(tmp_path / "killed" / "run", BOUNDARY), poll=0.005)
    kill_all(proc)  # the boundary's checkpoint is committed: the run is entering phase 1
    baseline_ckpt = tmp_path / "baseline" / "run" / "checkpoints" / f"step-{BOUNDARY:08d}"
    baseline = config(tmp_path, "baseline", tiny_shards)
    # "decay from here": a longer stable part, its decay after step 6, from the baseline's step 3
    branch = config(tmp_path, "branch", tiny_shards, train={"max_steps": 8, "resume": str(baseline_ckpt)})
    resumed, run, branched = run_pretrain_configs([killed, baseline, branch], ranks=2)
    for r in (resumed, run, branched):
        assert r.returncode == 0, r.output[-3000:]

    steps = records(run.run_dir)
    assert [steps[s]["phase"] for s in sorted(steps)] == [0, 0, 0, 1, 2, 2]
    assert steps[4]["tokens"] >= 4400 > steps[3]["tokens"]  # the token phase starts on the step after
    assert [len(steps[s]["samples"]) for s in sorted(steps)] == [16, 16, 32, 16, 16, 16]
    step_tokens = {
        s: r["tokens"] - steps[s - 1]["tokens"] if s > 1 else r["tokens"] for s, r in steps.items()
    }
    share = {s: steps[s]["masked_tokens"] / step_tokens[s] for s in steps}
    assert all(0.1 < share[s] < 0.2 for s in (1, 2, 3)) and 0.25 < share[4] < 0.35
    assert all(0.01 < share[s] < 0.1 for s in (5, 6))
    assert "phase 1 from step 3" in run.output and "a new sample stream" in run.output
    assert "phase 2 from step 4" in run.output and "continuing the sample stream" in run.output

    drawn = {s: steps[s].get("source_samples") for s in sorted(steps)}
    assert drawn[1] is None and drawn[4] == {"web": 12, "books": 4}  # the mixture from phase 1 on
    assert drawn[6] == {"web": 36, "books": 12}  # phase 2 continues phase 1's stream and its counts

    assert f"resuming from {tmp_path / 'killed' / 'run' / 'checkpoints'}" in resumed.output
    assert step_trace(resumed.run_dir) == step_trace(run.run_dir)
    assert {s: r.get("source_samples") for s, r in records(resumed.run_dir).items()} == drawn

    assert f"resuming from {baseline_ckpt}" in branched.output
    branch_steps = records(branched.run_dir)
    assert branch_steps[4]["loss"] == steps[4]["loss"] and branch_steps[4]["lr"] == steps[4]["lr"]
    assert branch_steps[6]["lr"] > steps[6]["lr"]  # the baseline has decayed by then, the branch not yet
    record = json.loads((branched.run_dir / "checkpoints" / "step-00000008" / "COMPLETE.json").read_text())
    assert record["identity"]["branched_from"] == [{"checkpoint": str(baseline_ckpt), "step": BOUNDARY}]
