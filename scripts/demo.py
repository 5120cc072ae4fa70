"""`make demo`: sample corpus -> WordPiece tokenizer -> shards -> 2-rank ZeRO-2 CPU training -> losses ->
fine-tuning on the offline downstream task, pretrained against random-init.

Run as `python -m scripts.demo`. Everything goes under DEMO_DIR (environment variable, default demo/);
DEMO_MAX_STEPS (environment variable) trains that many steps instead of configs/demo.yaml's 400.
Each stage runs as a subprocess through the real command-line tools and leaves a `.done` marker when it
succeeded, so a rerun skips finished stages; training resumes from its newest checkpoint
(train.resume=auto) and, when it already finished, only evaluates. The fine-tuning marker names the
training step it fine-tuned, so a run that trained on (a larger DEMO_MAX_STEPS) is fine-tuned again.
The last stage fine-tunes the run dir
(`mlm-finetune` exports its newest checkpoint on the fly) on `mlm-data sample-task`, whose evaluation
texts the sample corpus leaves out. Exit status: that of the failing stage, else 0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pretrain.runtime.distributed import free_port

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
VOCAB_SIZE = 8000
SEQ_LEN = 128
RANKS = 2
# Fine-tuning budget of the last stage: the same for the pretrained model and the random-init baseline.
# The demo's BERT-Tiny recipe, as measured (docs/finetuning.md): a learning rate for a small model, and
# the BERT recipe's batches of 32 (here of similar lengths), 10% warmup and weight decay 0.01, where
# mlm-finetune's defaults are those of a plain HF fine-tune.
# One thread per run, like the training ranks (two OpenMP threads of one process lose several-fold on 2
# busy cores), and two runs at a time, one per core: the same results as one at a time, in 58 s, not 96 s.
FINETUNE_ARGS = [
    "--seeds",
    "2",
    "--epochs",
    "3",
    "--lr",
    "5e-4",
    "--max-seq-len",
    str(SEQ_LEN),
    "--batch-size",
    "32",
    "--group-by-length",
    "--warmup-ratio",
    "0.1",
    "--weight-decay",
    "0.01",
    "--threads",
    "1",
    "--jobs",
    "2",
]


def _tool(name: str) -> str:
    """The console script `name` beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def _finetune_command() -> list[str]:
    """`mlm-finetune` when installed as a console script, else the module behind it."""
    beside = Path(sys.executable).parent / "mlm-finetune"
    if beside.exists() or shutil.which("mlm-finetune"):
        return [_tool("mlm-finetune")]
    return [sys.executable, "-m", "pretrain.finetune"]


def _stage(
    title: str, done_marker: Path, cmd: list[str], clean: Path | None = None, made_from: str | None = None
) -> None:
    """Run `cmd` unless `done_marker` exists; on success write the marker. Exits on failure.

    `made_from` names what the stage consumed (e.g. the training step it fine-tuned): a marker written
    for something else is stale, and the stage runs again.
    """
    if done_marker.exists():
        recorded = done_marker.read_text().splitlines()[1:2]
        if made_from is None or recorded == [made_from]:
            print(f"[demo] {title}: already done ({done_marker.parent})", flush=True)
            return
        was = recorded[0] if recorded else "an older demo"
        print(f"[demo] {title}: done for {was}, now {made_from}: running it again", flush=True)
    if clean is not None and clean.exists():
        shutil.rmtree(clean)  # a previous attempt stopped half-way; start the stage over
    print(f"[demo] {title}: {' '.join(cmd)}", flush=True)
    started = time.monotonic()
    result = subprocess.run(cmd)
    if result.returncode != 0:
        print(f"[demo] {title} failed with exit code {result.returncode}", file=sys.stderr)
        sys.exit(result.returncode)
    done_marker.parent.mkdir(parents=True, exist_ok=True)
    done_marker.write_text(f"{time.time()}\n{made_from or ''}\n")
    print(f"[demo] {title}: done in {time.monotonic() - started:.0f} s", flush=True)


def _max_steps_override() -> list[str]:
    """`train.max_steps=N` from DEMO_MAX_STEPS, or nothing; exits 2 when it is not a positive integer."""
    value = os.environ.get("DEMO_MAX_STEPS", "").strip()
    if not value:
        return []
    if not value.isdigit() or int(value) < 1:
        print(
            f"[demo] DEMO_MAX_STEPS={value!r} is not a positive integer (e.g. DEMO_MAX_STEPS=600)",
            file=sys.stderr,
        )
        sys.exit(2)
    return [f"train.max_steps={int(value)}"]


def _eval_losses(metrics_path: Path) -> list[dict]:
    if not metrics_path.exists():
        return []
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    return [r for r in records if "eval_loss" in r]


def main() -> int:
    """Run the demo end to end; returns 0 or exits with the failing stage's code."""
    steps = _max_steps_override()  # before any stage: a typo must not cost a corpus build
    demo = Path(os.environ.get("DEMO_DIR", "demo")).resolve()
    corpus, tokenizer, shards, run_dir = demo / "corpus", demo / "tokenizer", demo / "shards", demo / "run"
    demo.mkdir(parents=True, exist_ok=True)
    data = _tool("mlm-data")
    _stage(
        "sample corpus",
        demo / ".corpus.done",
        [data, "sample-corpus", str(corpus), "--workers", str(RANKS)],
        clean=corpus,
    )
    _stage(
        "tokenizer",
        demo / ".tokenizer.done",
        [
            data,
            "tokenizer",
            "--input",
            str(corpus),
            "--kind",
            "wordpiece",
            "--vocab-size",
            str(VOCAB_SIZE),
            "--out",
            str(tokenizer),
        ],
        clean=tokenizer,
    )
    _stage(
        "shards",
        demo / ".shards.done",
        [
            data,
            "build",
            "--input",
            str(corpus),
            "--tokenizer",
            str(tokenizer),
            "--out",
            str(shards),
            "--seq-len",
            str(SEQ_LEN),
            "--mode",
            "full-sentences",
            "--workers",
            "2",
        ],
        clean=shards,
    )
    train_cmd = [
        _tool("torchrun"),
        f"--nproc-per-node={RANKS}",
        f"--master-port={free_port()}",
        "-m",
        "pretrain",
        "--config",
        str(CONFIG),
        f"run_dir={run_dir}",
        f"data.path={shards}",
        *steps,
    ]
    print(f"[demo] training on {RANKS} CPU ranks with ZeRO-2: {' '.join(train_cmd)}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(train_cmd, env=env)
    if result.returncode != 0:
        print(f"[demo] training failed with exit code {result.returncode}", file=sys.stderr)
        return result.returncode
    evals = _eval_losses(run_dir / "metrics.jsonl")
    trained = f"the run at step {evals[-1]['step']}" if evals else None  # training ends with an eval
    if evals:
        first, last = evals[0], evals[-1]
        print(
            f"[demo] initial eval loss {first['eval_loss']:.3f} (step {first['step']}), "
            f"final eval loss {last['eval_loss']:.3f} (step {last['step']}), "
            f"final masked-token accuracy {last['eval_accuracy']:.3f}"
        )
    task, finetune = demo / "task", demo / "finetune"
    _stage("downstream task", demo / ".task.done", [data, "sample-task", str(task)], clean=task)
    _stage(
        "fine-tuning, pretrained vs random-init",
        demo / ".finetune.done",
        [
            *_finetune_command(),
            str(run_dir),
            "--train",
            str(task / "train.jsonl"),
            "--validation",
            str(task / "validation.jsonl"),
            *FINETUNE_ARGS,
            "--baseline",
            "random-init",
            "--out",
            str(finetune),
        ],
        clean=finetune,
        made_from=trained,
    )
    _print_downstream(finetune / "report.json")
    print(f"[demo] checkpoints: {run_dir / 'checkpoints'}")
    print(f"[demo] TensorBoard logs: tensorboard --logdir {run_dir / 'tensorboard'}")
    return 0


def _print_downstream(report_path: Path) -> None:
    report = json.loads(report_path.read_text())
    task = report["task"]

    def cell(which: str) -> str:
        r = report[which]
        return f"{r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f}"

    print(
        f"[demo] downstream (which stdlib package a docstring is from: {len(task['labels'])} classes, "
        f"{task['train_examples']} train / {task['validation_examples']} validation docstrings, "
        f"{len(report['pretrained']['per_seed'])} seeds each): accuracy pretrained {cell('pretrained')}, "
        f"random-init {cell('random_init')}, majority class {task['majority_class_accuracy']:.3f}; "
        f"report: {report_path}"
    )


if __name__ == "__main__":
    sys.exit(main())
