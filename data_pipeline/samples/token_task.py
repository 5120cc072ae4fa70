"""A real token-classification (NER-style) task with no network: the Python names a docstring mentions.

Examples are the paragraphs (blank-line separated, at least `python_source.MIN_WORDS` words, doctest
paragraphs left out) of the docstrings of the sample sequence task's files (`task.FAMILIES`, test dirs
left out), split into words as CoNLL-style text is (runs of letters/digits/underscore, and each other
non-space character alone). Every word is tagged in the BIO scheme by a stated rule over facts of this
interpreter, never by hand and never at random:

- EXC: a word that is the name of a built-in exception or warning class (`ValueError`, `StopIteration`).
- ARG: a word that is a parameter of the documented function (for a class, of its `__init__`), leaving
  out `self`, `cls` and one-letter names (they collide with English words such as "a").
- MOD: a dotted name (`os.path.join`, no spaces around the dots) whose first part is a standard-library
  module: the longest prefix that names a stdlib module is the entity (`os . path`, three words); and an
  undotted stdlib module name followed by the word "module(s)" or "package(s)" ("the email package").

The rules are checked in that order (a parameter called like a module is ARG). Only the text goes into
the input: a model must tell a parameter or a module from context. The split is that of the sequence
task, by the whole docstring (`task.is_validation_text`), and a validation docstring is kept only when it
is one of that task's evaluation texts, which the sample corpus leaves out: a model pretrained on the
sample corpus has never seen a validation paragraph. A validation paragraph that is also a training
paragraph ("Return None.") is dropped and counted.
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import logging
import os
import re
import sys
import sysconfig
from collections import Counter

from data_pipeline.errors import DataError
from data_pipeline.integrity import atomic_open, write_json_atomic
from data_pipeline.samples.python_source import MIN_WORDS, collapse, documented_nodes, python_files
from data_pipeline.samples.task import FAMILIES, SPLITS, evaluation_texts, family_files, is_validation_text

logger = logging.getLogger(__name__)

ENTITY_TYPES = ("ARG", "EXC", "MOD")
LABELLING = (
    "BIO tags by rule: EXC = name of a built-in exception or warning class; ARG = a parameter of the "
    "documented function (class: its __init__; not self/cls/one-letter names); MOD = the longest prefix of "
    "a dotted name that is a standard-library module, or a stdlib module name followed by "
    "'module(s)'/'package(s)'. Checked in the order EXC, ARG, MOD."
)
WORD = re.compile(r"\w+|[^\w\s]")
_IDENTIFIER = re.compile(r"[^\W\d]\w*")
_MODULE_WORDS = {"module", "modules", "package", "packages"}
# Stdlib "modules" whose names are English words used as such ("this module").
_NOT_MODULES = {"this", "antigravity"}


@functools.lru_cache(maxsize=4)
def stdlib_modules(stdlib: str) -> frozenset[str]:
    """Dotted names of the standard library's modules and packages: the .py files and package dirs under
    `stdlib`, the interpreter's built-in and listed stdlib modules, and `os.path`."""
    names = set(sys.builtin_module_names) | set(sys.stdlib_module_names) | {"os.path"}
    for path in python_files(stdlib):
        parts = os.path.relpath(path, stdlib)[: -len(".py")].split(os.sep)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and all(p.isidentifier() for p in parts):
            names.add(".".join(parts))
    return frozenset(names - _NOT_MODULES)


def exception_names() -> frozenset[str]:
    """Names of the built-in exception and warning classes of this interpreter."""
    return frozenset(
        name
        for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    )


def parameters_of(node: ast.AST) -> frozenset[str]:
    """Parameter names of a function (or of a class's `__init__`) that count as ARG entities: not self,
    cls or one-letter names. Modules and classes without `__init__` have none."""
    if isinstance(node, ast.ClassDef):
        node = next((s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return frozenset()
    a = node.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    names += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
    return frozenset(n for n in names if len(n) > 1 and n not in ("self", "cls"))


def tag_words(text: str, parameters: frozenset[str], modules: frozenset[str], exceptions: frozenset[str]):
    """(words, BIO tags) of `text` by the module docstring's rules."""
    spans = [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]
    words = [w for w, _, _ in spans]
    tags = ["O"] * len(words)
    i = 0
    while i < len(spans):
        if not _IDENTIFIER.fullmatch(words[i]):
            i += 1
            continue
        last = i  # extend over ".name" parts written without spaces: a dotted name
        while (
            last + 2 < len(spans)
            and words[last + 1] == "."
            and spans[last + 1][1] == spans[last][2]
            and spans[last + 2][1] == spans[last + 1][2]
            and _IDENTIFIER.fullmatch(words[last + 2])
        ):
            last += 2
        parts = words[i : last + 1 : 2]
        if len(parts) > 1:
            depth = max((k for k in range(1, len(parts) + 1) if ".".join(parts[:k]) in modules), default=0)
            if depth:
                tags[i : i + 2 * depth - 1] = ["B-MOD"] + ["I-MOD"] * (2 * depth - 2)
        elif parts[0] in exceptions:
            tags[i] = "B-EXC"
        elif parts[0] in parameters:
            tags[i] = "B-ARG"
        elif parts[0] in modules and i + 1 < len(words) and words[i + 1].lower() in _MODULE_WORDS:
            tags[i] = "B-MOD"
        i = last + 1
    return words, tags


def _paragraphs(docstring: str) -> list[str]:
    """The docstring's paragraphs with at least MIN_WORDS words, whitespace collapsed; doctests left out."""
    out = []
    for paragraph in re.split(r"\n\s*\n", docstring.strip()):
        if paragraph.lstrip().startswith(">>>") or len(paragraph.split()) < MIN_WORDS:
            continue
        out.append(" ".join(paragraph.split()))
    return out


def token_task_examples(stdlib: str | None = None) -> tuple[list[dict], dict]:
    """All examples of the token task and the counts of what was dropped.

    stdlib: the standard library dir (None: this interpreter's). Returns (examples, dropped): examples
    are {"tokens", "tags", "source" (path relative to stdlib), "split"} in a deterministic order;
    dropped counts {"repeated_docstrings", "not_evaluation_texts" (validation docstrings the sequence
    task does not hold out: ambiguous ones), "validation_in_train" (validation paragraphs that are also
    training paragraphs)}.
    """
    stdlib = stdlib or sysconfig.get_paths()["stdlib"]
    modules, exceptions = stdlib_modules(stdlib), exception_names()
    held_out = evaluation_texts(stdlib)
    seen: set[str] = set()
    dropped = Counter(repeated_docstrings=0, not_evaluation_texts=0, validation_in_train=0)
    examples = []
    for _, path in family_files(stdlib):
        for node, docstring in documented_nodes(path):
            if len(docstring.split()) < MIN_WORDS:
                continue
            key = collapse(docstring)  # the sequence task's text: the same split
            if key in seen:
                dropped["repeated_docstrings"] += 1
                continue
            seen.add(key)
            split = "validation" if is_validation_text(key) else "train"
            if split == "validation" and key not in held_out:
                dropped["not_evaluation_texts"] += 1
                continue
            params = parameters_of(node)
            source = os.path.relpath(path, stdlib)
            for paragraph in _paragraphs(docstring):
                words, tags = tag_words(paragraph, params, modules, exceptions)
                examples.append({"tokens": words, "tags": tags, "source": source, "split": split})
    train_texts = {tuple(e["tokens"]) for e in examples if e["split"] == "train"}
    kept = []
    for e in examples:
        if e["split"] == "validation" and tuple(e["tokens"]) in train_texts:
            dropped["validation_in_train"] += 1
        else:
            kept.append(e)
    return kept, dict(dropped)


def token_summary(examples: list[dict], dropped: dict) -> dict:
    """Sizes, entity counts per type and the all-"O" baseline per split (what task.json holds)."""
    out: dict = {
        "task": "token classification: the Python names a standard-library docstring mentions",
        "labelling": LABELLING,
        "scheme": "BIO",
        "entity_types": list(ENTITY_TYPES),
        "python": sys.version.split()[0],
        "families": {label: list(packages) for label, packages in FAMILIES.items()},
        "dropped": dropped,
    }
    for split in SPLITS:
        rows = [e for e in examples if e["split"] == split]
        tags = [t for e in rows for t in e["tags"]]
        entities = Counter(t[2:] for t in tags if t.startswith("B-"))
        out[split] = {
            "sentences": len(rows),
            "words": len(tags),
            "entities": {kind: entities.get(kind, 0) for kind in ENTITY_TYPES},
            "sentences_with_entities": sum(any(t != "O" for t in e["tags"]) for e in rows),
            # The baselines a tagger must beat: tagging every word O is right this often, and finds
            # no entity (entity-level precision, recall and F1 all 0).
            "all_o_word_accuracy": tags.count("O") / len(tags) if tags else 0.0,
            "all_o_entity_f1": 0.0,
        }
    return out


def write_token_task(out_dir: str, *, stdlib: str | None = None) -> dict:
    """Write OUT/train.jsonl, OUT/validation.jsonl ({"tokens", "tags", "source"} per line) and
    OUT/task.json (the summary, task.json last), each through a temporary name. Returns the summary.
    Raises DataError when out_dir already holds a task or no docstring was found."""
    os.makedirs(out_dir, exist_ok=True)
    if any(os.path.exists(os.path.join(out_dir, name)) for name in ("train.jsonl", "task.json")):
        raise DataError(f"{out_dir} already holds a sample task (train.jsonl); choose an empty directory")
    examples, dropped = token_task_examples(stdlib)
    if not examples:
        raise DataError(f"no docstrings found under {stdlib or sysconfig.get_paths()['stdlib']}")
    for split in SPLITS:
        with atomic_open(os.path.join(out_dir, f"{split}.jsonl"), "w") as f:
            for e in examples:
                if e["split"] == split:
                    record = {"tokens": e["tokens"], "tags": e["tags"], "source": e["source"]}
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    stats = token_summary(examples, dropped)
    write_json_atomic(os.path.join(out_dir, "task.json"), stats, indent=2)
    logger.info(
        "token task in %s: %d train, %d validation sentences",
        out_dir,
        stats["train"]["sentences"],
        stats["validation"]["sentences"],
    )
    return stats
