"""mlm-launch against a real local SLURM (two emulated nodes): allocations, the self-requeueing job script.

The requeue-chain test runs the real job script, srun, `mlm-launch slurm-node` and signal forwarding with a
stand-in trainer that keeps the trainer's process contract (SIGUSR1/SIGTERM -> save -> exit 75, resume
from its own checkpoint), so the scheduler side is checked apart from the trainer's numerics.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from data_pipeline.shards.format import ShardReader
from data_pipeline.shards.manifest import Manifest
from tests.helpers.runs import write_config
from tests.helpers.slurm import kill_wait_s, scheduler_log, wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("slurm_cluster")]

STAND_IN_TRAINER = """
import os, signal, socket, sys, time
run = sys.argv[sys.argv.index("--run") + 1]
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
stop = []
# The last rank SIGKILLs itself after this step (0: never), as an out-of-memory kill would.
sigkill_after = int(os.environ.get("STAND_IN_SIGKILL_AFTER_STEP", "0"))
for sig in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(sig, lambda *_: stop.append(1))
# Rank 0 serves the master's rendezvous port (which the other node's launcher waits for) and, like the
# trainer's collectives, the ranks agree after every step whether any of them was asked to stop.
if rank == 0:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", int(os.environ["MASTER_PORT"])))
    srv.listen()
    peers = []
    while len(peers) < world - 1:
        conn, _ = srv.accept()
        if conn.recv(1):  # the launcher's reachability probe connects and closes without a byte
            peers.append(conn)
else:
    master = socket.create_connection((os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])))
    master.sendall(b"h")

# One byte from a peer. A dead peer blocks us forever, as an NCCL collective with a dead rank waits for
# its timeout (minutes): a stop signal then only sets the flag.
def receive(conn):
    byte = conn.recv(1)
    while not byte:
        time.sleep(60)
    return byte

def anyone_stops(mine):
    if rank > 0:
        master.sendall(b"1" if mine else b"0")
        return receive(master) == b"1"
    flags = [mine] + [receive(p) == b"1" for p in peers]  # every peer's byte read, whatever the verdict
    verdict = b"1" if any(flags) else b"0"
    for p in peers:
        p.sendall(verdict)
    return verdict == b"1"

ckpt = os.path.join(run, f"ckpt{rank}")
step = int(open(ckpt).read()) if os.path.exists(ckpt) else 0
while step < int(os.environ["STAND_IN_STEPS"]):
    time.sleep(0.5)
    step += 1
    with open(os.path.join(run, f"steps{rank}"), "a") as f:
        f.write(f"{step} {world} {sys.argv[-1]}\\n")
    with open(ckpt + ".tmp", "w") as f:
        f.write(str(step))
    os.replace(ckpt + ".tmp", ckpt)
    if step == sigkill_after and rank == world - 1:
        os.kill(os.getpid(), signal.SIGKILL)
    if anyone_stops(bool(stop)):
        sys.exit(75)
"""


def _stand_in_trainer(workdir) -> None:
    """Put STAND_IN_TRAINER at WORKDIR/pretrain, found first by `python -m pretrain` run from WORKDIR.

    A regular package (with __init__.py): a bare directory would be a namespace package, which loses to
    the real `pretrain` wherever that is on sys.path (PYTHONPATH=checkout, as helpers run the tests).
    """
    (workdir / "pretrain").mkdir()
    (workdir / "pretrain" / "__init__.py").write_text("")
    (workdir / "pretrain" / "__main__.py").write_text(textwrap.dedent(STAND_IN_TRAINER))


def _launch(cwd, *argv: str, steps: int | None = None, env: dict[str, str] | None = None) -> str:
    """Run `python -m launcher ARGV` in CWD; STEPS is the stand-in trainer's length, ENV more variables
    (sbatch passes the environment on to the job). Returns what it printed: the job id."""
    env = {**os.environ, **({"STAND_IN_STEPS": str(steps)} if steps is not None else {}), **(env or {})}
    out = subprocess.run(
        [sys.executable, "-m", "launcher", *argv], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_hostfile_inside_a_real_allocation(tmp_path):
    out = subprocess.run(
        ["salloc", "--nodes=2", "--time=2", sys.executable, "-m", "launcher", "hostfile", "--slots", "2"]
        + ["--out", str(tmp_path / "hostfile")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "hostfile").read_text() == "node1 slots=2\nnode2 slots=2\n"


def test_time_limit_warning_saves_requeues_and_finishes(tmp_path):
    _stand_in_trainer(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "cfg.yaml").write_text(
        f"run_dir: {run}\ndata: {{path: shards}}\ntrain: {{micro_batch_size: 2, global_batch_size: 4}}\n"
    )
    # SLURM checks time limits every 30 s, so the warning (due 10 s in) comes 10-40 s into each 1-minute
    # job: 100 steps of 0.5 s cannot fit into one, however idle or loaded the machine is.
    argv = ["--nodes", "2", "--cpu", "--time", "1", "--signal-seconds", "50", "--job-name", "chain"]
    job = _launch(tmp_path, "slurm", *argv, "--", "--config", "cfg.yaml", "--run", str(run), steps=100)
    fields = wait_for_job(job, timeout_s=420)
    log = "".join(p.read_text() for p in (run / "slurm").glob("chain-*.out"))
    diagnosis = f"{fields}\n{log}\n{scheduler_log(job)}"
    assert fields["JobState"] == "COMPLETED", diagnosis
    assert int(fields["Restarts"]) >= 1, diagnosis
    assert "stopped before the time limit (exit 75): requeueing" in log
    for rank in (0, 1):
        lines = (run / f"steps{rank}").read_text().split()
        steps = [int(s) for s in lines[0::3]]
        assert steps == list(range(1, 101)), "each step ran exactly once across the requeued jobs"
        assert set(lines[1::3]) == {"2"} and set(lines[2::3]) == {"train.resume=auto"}


def test_scancel_is_not_undone_by_a_requeue(tmp_path):
    _stand_in_trainer(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "cfg.yaml").write_text(f"run_dir: {run}\ndata: {{path: shards}}\n")
    argv = ["--nodes", "2", "--cpu", "--time", "10", "--", "--config", "cfg.yaml", "--run", str(run)]
    job = _launch(tmp_path, "slurm", *argv, steps=10_000)
    wait_for_job(job, 60, until=lambda f: (run / "steps1").exists())
    subprocess.run(["scancel", job], check=True)
    fields = wait_for_job(job, 90)
    assert fields["JobState"] == "CANCELLED" and fields["Restarts"] == "0"
    log = "".join(p.read_text() for p in (run / "slurm").glob("*.out"))
    assert "not requeued by this script" in log  # the ranks got the signal, saved, and the chain stopped


def test_a_rank_killed_mid_run_fails_the_job_within_killwait_naming_it(tmp_path):
    # Rank 1 (node2) SIGKILLs itself after step 2; rank 0 (node1) then blocks for good, flagging SIGTERM
    # only, as a rank in an NCCL collective with a dead peer does: srun must stop it, KillWait bounds it.
    _stand_in_trainer(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "cfg.yaml").write_text(f"run_dir: {run}\ndata: {{path: shards}}\n")
    argv = ["--nodes", "2", "--cpu", "--time", "10", "--job-name", "dead"]
    argv += ["--", "--config", "cfg.yaml", "--run", str(run)]
    env = {"STAND_IN_SIGKILL_AFTER_STEP": "2", "MLM_KILL_GRACE_S": "2"}
    job = _launch(tmp_path, "slurm", *argv, steps=10_000, env=env)

    def rank_1_died(_fields) -> bool:
        steps = run / "steps1"
        return steps.exists() and len(steps.read_text().splitlines()) >= 2

    wait_for_job(job, 60, until=rank_1_died)
    died_at = time.monotonic()
    fields = wait_for_job(job, 120)
    took = time.monotonic() - died_at
    log = "".join(p.read_text() for p in (run / "slurm").glob("dead-*.out"))
    diagnosis = f"after {took:.1f} s: {fields}\n{log}\n{scheduler_log(job)}"
    assert fields["JobState"] == "FAILED" and fields["ExitCode"] == "137:0", diagnosis
    assert fields["Restarts"] == "0" and "requeueing" not in log, diagnosis
    named = re.findall(
        r"\] rank 1 \(local rank 0 on node2\) was killed by SIGKILL; srun stopped the other nodes", log
    )
    assert len(named) == 1, diagnosis
    print(f"job ended {took:.1f} s after the rank died (KillWait {kill_wait_s()} s)")
    # The step's SIGKILL comes KillWait after srun's SIGTERM; polls and bookkeeping take a few seconds.
    assert took < kill_wait_s() + 15, diagnosis
    assert not list((run / "slurm").glob(".failed-*")), "the job script removes the record it read"


def _train_job(tmp_path, shards, name: str) -> tuple[str, Path]:
    """Submit a 2-node CPU training job (1 rank per node, tiny BERT, 12 steps); return (job id, run dir)."""
    (tmp_path / name).mkdir()
    config = write_config(
        tmp_path / name, shards, train={"max_steps": 12, "log_every_steps": 1}, checkpoint={"every_steps": 4}
    )
    argv = [
        "slurm",
        "--nodes",
        "2",
        "--cpu",
        "--time",
        "15",
        "--job-name",
        name,
        "--",
        "--config",
        str(config),
    ]
    return _launch(tmp_path, *argv), tmp_path / name / "run"


def _step_losses(run_dir: Path) -> dict[int, float]:
    """{step: loss} from metrics.jsonl; a step trained again after a requeue keeps its last record."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_training_job_completes_and_a_requeued_one_resumes_to_the_same_losses(tiny_shards, tmp_path):
    plain, plain_run = _train_job(tmp_path, tiny_shards, "plain")
    requeued, requeued_run = _train_job(tmp_path, tiny_shards, "requeued")

    def reached_step_5(_fields) -> bool:
        metrics = requeued_run / "metrics.jsonl"
        return metrics.exists() and max(_step_losses(requeued_run), default=0) >= 5

    wait_for_job(requeued, 300, until=reached_step_5)
    subprocess.run(["scontrol", "requeue", requeued], check=True)  # what preemption with requeue does
    fields = {job: wait_for_job(job, 400) for job in (plain, requeued)}
    logs = {
        job: "".join(p.read_text() for p in (run / "slurm").glob("*.out"))
        for job, run in ((plain, plain_run), (requeued, requeued_run))
    }
    assert fields[plain]["JobState"] == "COMPLETED", logs[plain][-3000:]
    assert fields[requeued]["JobState"] == "COMPLETED", logs[requeued][-3000:]
    assert int(fields[requeued]["Restarts"]) == 1 and "(restart 1)" in logs[requeued]
    reference = _step_losses(plain_run)
    assert sorted(reference) == list(range(1, 13))
    assert _step_losses(requeued_run) == reference


def _sequences(shards_dir: Path, split: str) -> list[bytes]:
    """Every row of a split, all columns, as bytes, in sorted order (partitions change only the order)."""
    reader = ShardReader(str(shards_dir), split)
    rows = (reader[i] for i in range(len(reader)))
    return sorted(b"".join(row[name].tobytes() for name in sorted(row)) for row in rows)


def test_job_array_build_and_merge_equal_a_single_process_build(tiny_corpus_and_tokenizer, tmp_path):
    corpus, tokenizer = tiny_corpus_and_tokenizer
    documents = "".join(p.read_text() for p in sorted(corpus.glob("*.txt"))).split("\n\n")
    inputs = tmp_path / "inputs"  # three files, so that each of two array tasks gets work
    inputs.mkdir()
    for i in range(3):
        (inputs / f"part{i}.txt").write_text("\n\n".join(documents[i::3]) + "\n")
    # SOP rows are built per input file, so a partitioned build must give exactly a single build's rows.
    # Not NSP: its random-next segments come from the whole corpus in a single build but only from the
    # array task's own files in a partition; nor full-sentences, whose packing runs on across files.
    build_args = ["--input", str(inputs), "--tokenizer", str(tokenizer), "--seq-len", "64", "--mode", "sop"]
    build_args += ["--workers", "1"]
    single = tmp_path / "single"
    mlm_data = str(Path(sys.executable).parent / "mlm-data")
    subprocess.run([mlm_data, "build", *build_args, "--out", str(single)], check=True, capture_output=True)

    out = tmp_path / "merged"
    printed = _launch(
        tmp_path, "slurm-data", "--partitions", "2", "--time", "10", "--out", str(out), "--", *build_args
    )
    _build_id, merge_id = re.fullmatch(
        r"submitted build array (\d+) and merge job (\d+) \(afterok:\d+\)", printed
    ).groups()
    fields = wait_for_job(merge_id, 300)
    logs = "".join(p.read_text() for p in (tmp_path / "merged.parts" / "logs").glob("*.out"))
    assert fields["JobState"] == "COMPLETED", logs[-3000:]
    parts = sorted((tmp_path / "merged.parts").glob("part-*/manifest.json"))
    assert [p.parent.name for p in parts] == ["part-00000", "part-00001"]  # both array tasks built
    merged, reference = Manifest.load(str(out)), Manifest.load(str(single))
    for split in ("train", "validation"):
        assert merged.splits[split]["rows"] == reference.splits[split]["rows"]
        assert merged.splits[split]["tokens"] == reference.splits[split]["tokens"]
        assert _sequences(out, split) == _sequences(single, split)
