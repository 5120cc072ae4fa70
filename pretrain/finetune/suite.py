"""`mlm-finetune suite SUITE.yaml MODEL... --out DIR`: a list of fine-tuning tasks for one or several models,
summarised in one table (each task's metric and the average over tasks, mean ± std over seeds).

A suite file (YAML, read with the config loader's bounded safe loader and checked key by key):

    seeds: 3                        # every task, every model: the same seeds (so averages pair up)
    tasks:
      - name: docstrings            # letters, digits, . _ - (it names the task's output dir)
        task: sequence-classification   # the task type: mlm-finetune's --task value (TASK_TYPES)
        train: data/train.jsonl     # relative paths are relative to the suite file
        validation: data/validation.jsonl   # optional (else a split of train)
        metric: accuracy            # the number the table shows (default: the task type's first)
        budget: {epochs: 3, lr: 5.0e-5, batch-size: 32}   # mlm-finetune flags, per task
        options: {text-column: sentence}                 # any other mlm-finetune flags
      - name: stdlib-docstrings
        sample: stdlib-docstrings   # instead of train/validation: an offline task built into OUT/data/

SUITE may be `default`: the offline sample tasks (DEFAULT_SUITE). Each task x model is one mlm-finetune run
(cli.main, in this process) writing OUT/runs/<task>/<model>/report.json; the suite writes OUT/suite.json
and OUT/suite.md and prints the Markdown table. Every task's flags are checked by mlm-finetune's own
parser before the first run. Bad input: one line `mlm-finetune suite: error: ...`, exit 1.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from data_pipeline.integrity import write_atomic, write_json_atomic
from pretrain.errors import ConfigError
from pretrain.finetune.data import FinetuneInputError

# Task type (mlm-finetune's --task value) -> the flags that select it and the metrics its report has.
# A new task type is one line here.
TASK_TYPES = {
    "sequence-classification": {"flags": (), "metrics": ("accuracy", "f1_macro", "mcc")},
    "token-classification": {
        "flags": ("--task", "token-classification"),
        "metrics": ("f1", "precision", "recall", "word_accuracy"),
    },
}


def _write_docstring_task(out_dir: str) -> None:
    from data_pipeline.samples.task import write_sample_task

    write_sample_task(out_dir)


# Offline tasks built from text every machine has: name -> (task type, writer of train/validation.jsonl).
def _write_token_task(out_dir: str) -> None:
    from data_pipeline.samples.token_task import write_token_task

    write_token_task(out_dir)


SAMPLE_TASKS = {
    "stdlib-docstrings": ("sequence-classification", _write_docstring_task),
    "stdlib-names": ("token-classification", _write_token_task),
}
DEFAULT_SUITE = {"seeds": 3, "tasks": [{"name": name, "sample": name} for name in SAMPLE_TASKS]}
# Flags the suite sets itself for every run.
_SUITE_FLAGS = ("train", "validation", "out", "seeds", "seed-base")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class SuiteTask:
    """One task of a suite: its data (files or a sample task), type, metric and budget."""

    name: str
    task: str = "sequence-classification"
    train: str | None = None
    validation: str | None = None
    sample: str | None = None
    metric: str | None = None
    budget: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


@dataclass
class Suite:
    """A suite file: the seeds every run uses and the tasks."""

    tasks: list[SuiteTask]
    seeds: int = 3


def load_suite(path: str) -> tuple[Suite, str]:
    """(Suite, the dir its relative paths start from) of SUITE `path` (`default`: DEFAULT_SUITE). Raises
    FinetuneInputError naming the file and key for unknown keys, bad values, names or task types."""
    from pretrain.config.files import read_yaml_mapping
    from pretrain.config.typed import build_dataclass

    raw, base = (DEFAULT_SUITE, os.getcwd()) if path == "default" else (None, os.path.dirname(path))
    try:
        suite = build_dataclass(Suite, raw if raw is not None else read_yaml_mapping(path))
    except ConfigError as exc:
        raise FinetuneInputError(f"{path}: {exc}") from None
    if not suite.tasks or suite.seeds < 1:
        raise FinetuneInputError(f"{path}: a suite needs at least one task and seeds >= 1")
    names = [t.name for t in suite.tasks]
    for i, task in enumerate(suite.tasks):
        where = f"{path}: tasks[{i}] ({task.name})"
        if not _NAME.fullmatch(task.name) or names.count(task.name) > 1:
            raise FinetuneInputError(f"{where}: a task name is unique and made of letters, digits, . _ -")
        if task.sample is not None:
            if task.sample not in SAMPLE_TASKS or task.train or task.validation:
                raise FinetuneInputError(
                    f"{where}: sample is one of {', '.join(SAMPLE_TASKS)}, without train/validation"
                )
            task.task = SAMPLE_TASKS[task.sample][0]
        elif task.train is None:
            raise FinetuneInputError(f"{where}: give its train file (or a sample task)")
        if task.task not in TASK_TYPES:
            raise FinetuneInputError(f"{where}: task {task.task!r}: use one of {', '.join(TASK_TYPES)}")
        metrics = TASK_TYPES[task.task]["metrics"]
        task.metric = task.metric or metrics[0]
        if task.metric not in metrics:
            raise FinetuneInputError(
                f"{where}: metric {task.metric!r}: {task.task} reports {', '.join(metrics)}"
            )
        for key in (*task.budget, *task.options):
            if str(key).replace("_", "-") in _SUITE_FLAGS:
                raise FinetuneInputError(f"{where}: {key} is set by the suite, not per task")
    return suite, base


def model_labels(paths: list[str]) -> list[str]:
    """A short unique label per model path: its dir name (a repeat gets -2, -3, ...)."""
    labels: list[str] = []
    for path in paths:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(os.path.abspath(path))) or "model"
        label, n = name, 1
        while label in labels:
            n += 1
            label = f"{name}-{n}"
        labels.append(label)
    return labels


def _keys(mapping: dict) -> dict:
    """`mapping` with its keys as flag names: batch_size and --batch-size are both batch-size."""
    return {str(k).strip().lstrip("-").replace("_", "-"): v for k, v in mapping.items()}


def _flags(mapping: dict) -> list[str]:
    """mlm-finetune flags of a {key: value} mapping: `--key value`; for a switch `--key` when true and
    `--no-key` when false (BooleanOptionalAction; a plain store_true flag rejects it: the check says so)."""
    out: list[str] = []
    for key, value in mapping.items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False:
            out.append("--no-" + flag[2:])
        elif value is not None:
            out += [flag, str(value)]
    return out


def task_argv(task: SuiteTask, files: tuple[str, str | None], model: str, out: str, seeds: int, common: dict):
    """The mlm-finetune command line of `task` for `model` (`common`: flags for every run, which win)."""
    train, validation = files
    argv = [model, "--train", train, *(["--validation", validation] if validation else [])]
    argv += list(TASK_TYPES[task.task]["flags"])
    argv += _flags({**_keys(task.budget), **_keys(task.options), **_keys(common)})
    return argv + ["--seeds", str(seeds), "--out", out]


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise FinetuneInputError(message)


def check_argv(argv: list[str], where: str, parser: argparse.ArgumentParser) -> None:
    """Parse `argv` with `parser` (mlm-finetune's own); FinetuneInputError naming `where` on a bad flag."""
    parser.__class__ = _RaisingParser  # the same flags, but an error is raised, not printed and exited
    parser.allow_abbrev = False  # a suite's `epoch: 1` is a typo, not --epochs
    try:
        parser.parse_args(argv)
    except FinetuneInputError as exc:
        raise FinetuneInputError(f"{where}: {exc}") from None


def _task_files(task: SuiteTask, base: str, out: str) -> tuple[str, str | None]:
    if task.sample is None:
        resolve = lambda p: p if os.path.isabs(p) else os.path.join(base, p)  # noqa: E731
        return resolve(task.train), resolve(task.validation) if task.validation else None
    data = os.path.join(out, "data", task.sample)
    SAMPLE_TASKS[task.sample][1](data)
    return os.path.join(data, "train.jsonl"), os.path.join(data, "validation.jsonl")


def _summary(values: list[float]) -> dict:
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "per_seed": values}


ROWS = {"pretrained": "", "random_init": " (random init)"}


def run_suite(
    suite: Suite, base: str, models: list[str], out: str, seeds: int, common: dict, finetune
) -> dict:
    """Run every task of `suite` for every model in `models` with `seeds` seeds and the flags `common`
    (over the suite's), `finetune` being mlm-finetune (its `main` and `parser`); returns the suite result
    (what suite.json holds). Every run's flags are checked before the first starts. Raises
    FinetuneInputError when a run fails (naming the task and model) or its report lacks the task's metric."""
    labels = model_labels(models)
    plans = []
    for task in suite.tasks:
        files = (task.train, task.validation) if task.sample is None else ("<sample>", None)
        for model, label in zip(models, labels, strict=True):
            run_out = os.path.join(out, "runs", task.name, label)
            argv = task_argv(task, files, model, run_out, seeds, common)
            check_argv(argv, f"task {task.name}", finetune.parser())
            plans.append((task, model, label, run_out))
    results: dict[str, dict] = {}
    files_of: dict[str, tuple[str, str | None]] = {}
    for task, model, label, run_out in plans:
        if task.name not in files_of:
            files_of[task.name] = _task_files(task, base, out)
        print(f"[mlm-finetune suite] task {task.name}, model {label}", file=sys.stderr, flush=True)
        if finetune.main(task_argv(task, files_of[task.name], model, run_out, seeds, common)) != 0:
            raise FinetuneInputError(
                f"task {task.name}, model {model}: mlm-finetune failed (its error is above)"
            )
        report = load_report(os.path.join(run_out, "report.json"))
        entry = results.setdefault(
            task.name,
            {
                "name": task.name,
                "task": task.task,
                "metric": task.metric,
                "train": files_of[task.name][0],
                "rows": {},
            },
        )
        entry["majority_class_accuracy"] = report["task"].get("majority_class_accuracy")
        for which, suffix in ROWS.items():
            if which in report:
                runs = report[which]["per_seed"]
                if any(task.metric not in r for r in runs):
                    raise FinetuneInputError(
                        f"task {task.name}: its report has no {task.metric} (mcc: two classes)"
                    )
                entry["rows"][label + suffix] = {
                    **_summary([r[task.metric] for r in runs]),
                    "report": run_out,
                }
    tasks = [results[t.name] for t in suite.tasks]
    return {
        "models": dict(zip(labels, map(os.path.abspath, models), strict=True)),
        "seeds": seeds,
        "tasks": tasks,
        "average": _averages(tasks),
    }


def load_report(path: str) -> dict:
    """One run's report.json."""
    import json

    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _averages(tasks: list[dict]) -> dict:
    """Per row (model): the mean over tasks of each seed's score, then mean ± std of those over seeds."""
    rows = [r for r in tasks[0]["rows"] if all(r in t["rows"] for t in tasks)]
    per_seed = {r: np.mean([t["rows"][r]["per_seed"] for t in tasks], axis=0).tolist() for r in rows}
    return {r: _summary(values) for r, values in per_seed.items()}


def markdown_table(result: dict) -> str:
    """The suite result as one Markdown table: a row per model, a column per task and the average."""
    tasks = result["tasks"]
    head = [f"{t['name']} ({t['metric']})" for t in tasks] + [f"average ({len(tasks)} tasks)"]
    lines = ["| model | " + " | ".join(head) + " |", "|" + " --- |" * (len(head) + 1)]
    cell = lambda s: f"{s['mean']:.4f} ± {s['std']:.4f}"  # noqa: E731
    for row, average in result["average"].items():
        lines.append(
            f"| {row} | " + " | ".join(cell(t["rows"][row]) for t in tasks) + f" | {cell(average)} |"
        )
    majority = [t["majority_class_accuracy"] if t["metric"] == "accuracy" else None for t in tasks]
    if any(m is not None for m in majority):
        cells = " | ".join("" if m is None else f"{m:.4f}" for m in majority)
        lines.append(f"| majority class | {cells} | |")
    return "\n".join(lines) + f"\n\nMean ± std over {result['seeds']} seeds (sample std).\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlm-finetune suite",
        description="Fine-tune models on a suite of tasks; a table of the tasks and their average.",
    )
    p.add_argument("suite", help="suite YAML file, or `default` (the offline sample tasks)")
    p.add_argument("models", nargs="+", metavar="MODEL", help="export, HF model, run or checkpoint dirs")
    p.add_argument("--out", required=True, help="output dir: suite.json, suite.md, runs/, data/")
    p.add_argument("--seeds", type=int, help="seeds per task and model (default: the suite's)")
    p.add_argument("--baseline", choices=["random-init"], help="also train each model from random weights")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FLAG=VALUE",
        help="an mlm-finetune flag for every run, over the suite's (e.g. epochs=1, threads=1, peft=lora)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def _common(args: argparse.Namespace) -> dict:
    common: dict = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FinetuneInputError(f"--set {item!r}: expected FLAG=VALUE, e.g. epochs=1")
        # true / false: a switch (`--set group-by-length=false` is --no-group-by-length), as in YAML.
        switch = {"true": True, "false": False}.get(value.strip().lower())
        common[key.strip().lstrip("-")] = value if switch is None else switch
    for key in common:
        if key.replace("_", "-") in _SUITE_FLAGS:
            raise FinetuneInputError(f"--set {key}: the suite sets it (use --seeds / --out)")
    if args.seeds is not None and args.seeds < 1:
        raise FinetuneInputError(f"--seeds must be >= 1, got {args.seeds}")
    common.update({"baseline": args.baseline, "no-progress": args.no_progress or None})
    return common


@dataclass
class Finetune:
    """mlm-finetune as the suite uses it, handed in by its command line (which imports this module)."""

    main: Callable[[list[str]], int]
    parser: Callable[[], argparse.ArgumentParser]


def main(argv: list[str], finetune: Finetune) -> int:
    """Run `mlm-finetune suite` with `argv` (the arguments after `suite`); returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        common = _common(args)
        suite, base = load_suite(args.suite)
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise FinetuneInputError(f"--out {args.out} exists and is not a directory")
        os.makedirs(args.out, exist_ok=True)
        result = run_suite(suite, base, args.models, args.out, args.seeds or suite.seeds, common, finetune)
    except FinetuneInputError as exc:
        print(f"mlm-finetune suite: error: {exc}", file=sys.stderr)
        return 1
    result = {"suite": args.suite if args.suite == "default" else os.path.abspath(args.suite), **result}
    table = markdown_table(result)
    write_json_atomic(os.path.join(args.out, "suite.json"), result, indent=2)
    write_atomic(os.path.join(args.out, "suite.md"), table)
    print(table)
    print(f"suite: {os.path.join(args.out, 'suite.json')}")
    return 0
