"""A real labelled downstream task with no network: which standard-library package family a docstring is from.

Each example is one module, class or function docstring (at least `python_source.MIN_WORDS` words, blank lines
collapsed exactly as in the sample corpus) from the packages in FAMILIES; its label is the family. Test
directories are left out (they moved between Python versions). A text found in two families is dropped
(its label would be ambiguous); a text repeated within one family is kept once. The split is a pure
function of the text (a SHA-256 bucket), so it is the same on every machine and for every run, and the
sample corpus (`data_pipeline.samples.corpus`) can leave the evaluation texts out without building the
task first. Nothing is imported from the packages: files are read with `ast`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator

from data_pipeline.errors import DataError
from data_pipeline.integrity import atomic_open, write_json_atomic
from data_pipeline.samples.python_source import docstrings_of, python_files

logger = logging.getLogger(__name__)

# label -> top-level stdlib packages. Chosen to exist on every CPython 3.10-3.13 install (tkinter and
# idlelib are optional on many Linux distributions; distutils and lib2to3 were removed).
FAMILIES: dict[str, tuple[str, ...]] = {
    "asyncio": ("asyncio",),
    "concurrency": ("concurrent", "multiprocessing"),
    "email": ("email",),
    "importlib": ("importlib",),
    "unittest": ("unittest",),
    "web": ("http", "urllib", "wsgiref", "xmlrpc"),
    "xml": ("xml",),
}
VALIDATION_FRACTION = 0.2
SPLITS = ("train", "validation")
TEST_DIRS = {"test", "tests", "idle_test"}


def is_validation_text(text: str) -> bool:
    """True when `text` falls in the validation split: its SHA-256 bucket is below VALIDATION_FRACTION."""
    bucket = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64
    return bucket < VALIDATION_FRACTION


def family_files(stdlib: str) -> Iterator[tuple[str, str]]:
    """(label, path) of every non-test .py file of the FAMILIES packages, in sorted order."""
    for label, packages in sorted(FAMILIES.items()):
        for package in packages:
            root = os.path.join(stdlib, package)
            for path in python_files(root, skip=TEST_DIRS):
                yield label, path


def task_examples(stdlib: str | None = None) -> tuple[list[dict], dict]:
    """All examples of the task and the counts of what was dropped.

    stdlib: the standard library dir (None: this interpreter's). Returns (examples, dropped): examples
    are {"text", "label", "source" (path relative to stdlib), "split"} in a deterministic order;
    dropped counts {"repeated": later occurrences of a text already seen, "ambiguous": distinct texts
    found in more than one family (all their occurrences dropped)}.
    """
    stdlib = stdlib or sysconfig.get_paths()["stdlib"]
    first_seen: dict[str, dict] = {}
    labels_of: dict[str, set[str]] = {}
    duplicates = 0
    for label, path in family_files(stdlib):
        for text in docstrings_of(path):
            labels_of.setdefault(text, set()).add(label)
            if text in first_seen:
                duplicates += 1
                continue
            first_seen[text] = {"text": text, "label": label, "source": os.path.relpath(path, stdlib)}
    examples, ambiguous = [], 0
    for text, example in first_seen.items():
        if len(labels_of[text]) > 1:
            ambiguous += 1
            continue
        examples.append({**example, "split": "validation" if is_validation_text(text) else "train"})
    return examples, {"repeated": duplicates, "ambiguous": ambiguous}


@functools.lru_cache(maxsize=4)
def evaluation_texts(stdlib: str | None = None) -> frozenset[str]:
    """The texts of the task's validation split (what a pretraining corpus must not contain)."""
    examples, _ = task_examples(stdlib)
    return frozenset(e["text"] for e in examples if e["split"] == "validation")


def summary(examples: list[dict], dropped: dict) -> dict:
    """Sizes, class balance and the majority-class baseline per split (what task.json holds)."""
    out: dict = {
        "task": "which standard-library package family a docstring comes from",
        "python": sys.version.split()[0],
        "families": {label: list(packages) for label, packages in FAMILIES.items()},
        "validation_fraction": VALIDATION_FRACTION,
        "dropped": dropped,
    }
    train_counts = Counter(e["label"] for e in examples if e["split"] == "train")
    majority = train_counts.most_common(1)[0][0] if train_counts else None
    for split in SPLITS:
        counts = Counter(e["label"] for e in examples if e["split"] == split)
        total = sum(counts.values())
        out[split] = {
            "examples": total,
            "classes": dict(sorted(counts.items())),
            # The baseline a classifier must beat: always predict the training split's majority class.
            "majority_class": majority,
            "majority_accuracy": counts.get(majority, 0) / total if total else 0.0,
        }
    return out


def write_sample_task(out_dir: str, *, stdlib: str | None = None) -> dict:
    """Write OUT/train.jsonl, OUT/validation.jsonl ({"text", "label", "source"} per line) and OUT/task.json.

    Each file is written under a temporary name and renamed into place, task.json last. Returns the
    summary (see `summary`). Raises DataError when out_dir already holds a task or no docstring was found
    (a Python install without its standard library sources).
    """
    os.makedirs(out_dir, exist_ok=True)
    if any(os.path.exists(os.path.join(out_dir, name)) for name in ("train.jsonl", "task.json")):
        raise DataError(f"{out_dir} already holds a sample task (train.jsonl); choose an empty directory")
    examples, dropped = task_examples(stdlib)
    if not examples:
        raise DataError(f"no docstrings found under {stdlib or sysconfig.get_paths()['stdlib']}")
    for split in SPLITS:
        path = os.path.join(out_dir, f"{split}.jsonl")
        with atomic_open(path, "w") as f:
            for e in examples:
                if e["split"] == split:
                    record = {"text": e["text"], "label": e["label"], "source": e["source"]}
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    stats = summary(examples, dropped)
    path = os.path.join(out_dir, "task.json")
    write_json_atomic(path, stats, indent=2)
    logger.info(
        "sample task in %s: %d train, %d validation examples",
        out_dir,
        stats["train"]["examples"],
        stats["validation"]["examples"],
    )
    return stats
