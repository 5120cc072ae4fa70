"""What a checkpoint's weights belong to, and which changes a resume refuses, warns about or ignores.

The identity (recorded in COMPLETE.json by every save) is the model architecture and shape, the tokenizer
fingerprint, the data build identity (`Manifest.data_identity()`: build settings and sources without the
partition fields), the data content (`content_identity()`: the shards' sha256 list), the sequence length
trained on, the seed (sample order and masks are functions of it) and, for a run with phases, a digest
of each phase started (its config and the identity of the rows it opened); a mixture's are those of its
sources in order, plus its sources' names and probabilities (`data.weights`). A key a record written before it
existed lacks (`ADDED_LATER`) is not comparable: resume warns and goes on. A
resume onto another identity is refused with one line naming each change and the
`train.resume_allow_changed` name that accepts it. Other config changes (optimizer, masking, batch,
precision, ...) are real but may be deliberate: resume logs them in one warning line. Budgets, cadences
and paths (`HARMLESS`) pass silently.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from pretrain.checkpoint.record import CheckpointError

__all__ = [
    "ADDED_LATER",
    "RunDescription",
    "check_resume_identity",
    "config_changes",
    "describe_run",
    "run_identity",
    "tokenizer_files",
]

# identity key -> the name train.resume_allow_changed takes to accept a change of it (every "model.*" key,
# the architecture and its shape, is "model")
_GROUP = {
    "tokenizer": "tokenizer",
    "data": "data",
    "data.content": "data",
    "data.weights": "weights",
    "data.seq_len": "seq_len",
    "train.seed": "seed",
    "phases": "phases",
}
_GROUP_ORDER = ("model", "tokenizer", "data", "weights", "seq_len", "seed", "phases")
# Records written before the architecture registry name no architecture: they are all BERT's.
_ARCH_BEFORE_REGISTRY = "bert"
_WHAT = {
    "tokenizer": "tokenizer (fingerprint)",
    "data": "data (build identity)",
    "data.content": "data (shard contents)",
    "data.weights": "data.sources (names and weights)",
    "phases": "phases (digests of those started)",
}
# Identity keys that records of older versions lack: a missing one cannot be compared (warned, not refused).
ADDED_LATER = ("data.content",)
# Identity keys recorded for the reader, never compared: the checkpoints of other runs a run continued
# from (`train.resume=PATH`, a decay branch), which that run's own next resume cannot know beforehand.
RECORDED_ONLY = ("branched_from",)
log = logging.getLogger(__name__)
# Config keys (or prefixes ending in '.') whose change cannot make a resumed run train something else.
HARMLESS = (
    "run_dir",
    "data.path",
    "data.sources",  # what they hold and weigh is in the identity (data, data.weights): paths may move
    "data.temperature",
    "data.prefetch_batches",
    "model.preset",
    "model.init_from",
    "train.max_steps",
    "train.max_tokens",
    "train.max_minutes",
    "train.resume",
    "train.resume_allow_changed",
    "train.log_every_steps",
    "checkpoint.",
    "eval.",
    "metrics.",
    "health.",
    "debug.",
)


@dataclass(frozen=True)
class RunDescription:
    """What each checkpoint of a run records besides the training state, and what its resume accepts.

    identity: see `run_identity`; config: the resolved config as plain dicts (written into the
    checkpoint as config.yaml); hf_config: the model's `transformers` config as JSON text (written as
    hf_config.json: export rebuilds the model from it); tokenizer_dir / tokenizer_files: the tokenizer
    copied into the checkpoint; allow_changed: the identity changes a resume accepts
    (train.resume_allow_changed).
    """

    identity: dict = field(default_factory=dict)
    config: dict | None = None
    hf_config: str | None = None
    tokenizer_dir: str | None = None
    tokenizer_files: tuple[str, ...] = ()
    allow_changed: tuple[str, ...] = ()


def describe_run(cfg, model, source, *, seq_len: int, tokenizer_files: tuple[str, ...]) -> RunDescription:
    """The RunDescription of training `cfg` with the built `model` on the row source `source`, whose
    tokenizer dir holds `tokenizer_files` (`source_tokenizer_files(source)`, checked before the model is
    built). Raises DataError when the source has no build identity.
    """
    from pretrain.config import config_to_dict

    return RunDescription(
        identity=run_identity(cfg.model.arch, model, source, seq_len=seq_len, seed=cfg.train.seed),
        config=config_to_dict(cfg),
        hf_config=model.hf_config.to_json_string(use_diff=False),
        tokenizer_dir=source.tokenizer_dir,
        tokenizer_files=tuple(tokenizer_files),
        allow_changed=tuple(cfg.train.resume_allow_changed),
    )


def source_tokenizer_files(source) -> tuple[str, ...]:
    """The tokenizer files of the row source's tokenizer dir, after checking it is the tokenizer the rows
    were built with (fingerprint, vocab_size, special ids: see `tokenizer_files`). Cheap next to a model:
    run it first, so a manifest's false vocab_size never sizes an embedding."""
    return tuple(
        tokenizer_files(
            source.tokenizer_dir, source.tokenizer_fingerprint, source.vocab_size, source.special_ids
        )
    )


def run_identity(arch: str, model, source, *, seq_len: int, seed: int) -> dict:
    """The identity of a run: the architecture `arch` and the built `model`'s shape (`model.shape()`), the
    row source's tokenizer fingerprint, data identity and content identity, the sequence length trained on
    and the seed, and for a mixture its sources' names and probabilities in order ("data.weights"). JSON
    values, flat keys ("model.arch", "model.hidden_size", ..., "tokenizer", "data", "data.content", ...).

    Raises data_pipeline.errors.DataError when the source records no build identity.
    """
    identity = {
        "model.arch": arch,
        **{f"model.{key}": value for key, value in model.shape().items()},
        "tokenizer": source.tokenizer_fingerprint,
        "data": source.data_identity(),
        "data.content": source.content_identity(),
        "data.seq_len": int(seq_len),
        "train.seed": int(seed),
    }
    weights = getattr(source, "weights", None)  # a mixture's [[name, probability], ...], in order
    if weights is not None:
        identity["data.weights"] = [[str(name), float(p)] for name, p in weights]
    return identity


def _group(key: str) -> str:
    """The train.resume_allow_changed name that accepts a change of identity key `key`."""
    return "model" if key.startswith("model.") else _GROUP.get(key, key)


def _show(key: str, value) -> str:
    if isinstance(value, list):  # phases: one digest per started phase
        return "[" + ", ".join(_show(key, v) for v in value) + "]"
    if isinstance(value, str) and len(value) == 64:  # a sha256: its head is enough to tell them apart
        return value[:12]
    return repr(value)


def check_resume_identity(tag_dir: str, saved: dict, current: dict, allowed) -> list[str]:
    """Compare the checkpoint's recorded identity `saved` with this run's `current` one.

    Returns the accepted changes (each 'key old -> new', for the log) when every change is in `allowed`
    (names from config.RESUME_ALLOWABLE_CHANGES). Raises CheckpointError otherwise: one line naming each
    change (old vs new value) and the train.resume_allow_changed names that would accept them.
    """
    saved, current = ({"model.arch": _ARCH_BEFORE_REGISTRY, **identity} for identity in (saved, current))
    saved, current = _started_phases_only(saved, current)
    changes, names = [], []
    order = {name: i for i, name in enumerate(_GROUP_ORDER)}
    keys = [*current, *(k for k in saved if k not in current)]  # identity order within a group
    for key in sorted(keys, key=lambda k: order.get(_group(k), len(order))):
        old, new = saved.get(key), current.get(key)
        if old == new or key in RECORDED_ONLY:
            continue
        if key in ADDED_LATER and key not in saved:
            log.warning(
                "%s records no %s (saved by an older mlm-pretrain): that part of this run cannot be "
                "compared with it; resuming on the other identity keys",
                tag_dir,
                key,
            )
            continue
        changes.append(f"{_WHAT.get(key, key)} {_show(key, old)} -> {_show(key, new)}")
        name = _group(key)
        if name not in allowed and name not in names:
            names.append(name)
    if names:
        raise CheckpointError(
            f"refusing to resume {tag_dir}: it was trained with another setup ({'; '.join(changes)}); "
            f"set train.resume_allow_changed=[{','.join(names)}] to continue from it deliberately, or "
            "train in a new run_dir"
        )
    return changes


def _started_phases_only(saved: dict, current: dict) -> tuple[dict, dict]:
    """The identities with `phases` comparable: a checkpoint records the digests of the phases it had
    started, this run lists all of its phases; only as many as the checkpoint started are compared (a
    phase that had not started may change; one added where there were none is new, not a change)."""
    if "phases" not in current:
        return saved, current
    if "phases" not in saved:
        return saved, {k: v for k, v in current.items() if k != "phases"}
    return saved, {**current, "phases": current["phases"][: len(saved["phases"])]}


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _ignored(key: str, identity_keys) -> bool:
    if key in identity_keys:  # refused (or accepted) by the identity check, not warned about twice
        return True
    return any(key == h or (h.endswith(".") and key.startswith(h)) for h in HARMLESS)


def config_changes(saved: dict, current: dict, identity_keys=()) -> list[str]:
    """'key old -> new' for every config key (dotted) that differs between the checkpoint's resolved
    config `saved` and this run's `current` one, leaving out HARMLESS keys and `identity_keys` (the run
    identity's keys, which name config keys where they are one: model.arch, model.hidden_size, ...)."""
    old, new = _flatten(saved), _flatten(current)
    return [
        f"{key} {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if not _ignored(key, identity_keys) and old.get(key) != new.get(key)
    ]


def tokenizer_files(
    tokenizer_dir: str, fingerprint: str, vocab_size: int | None = None, special_ids: dict | None = None
) -> list[str]:
    """The tokenizer files of `tokenizer_dir` (names), after checking that they are the tokenizer whose
    `fingerprint`, `vocab_size` and `special_ids` the shards' manifest recorded (the last two when given).

    Raises CheckpointError when they are not (the directory was changed after the build: the shards'
    token ids belong to another tokenizer) and DataError when it holds no loadable tokenizer or the
    manifest's vocab_size / special ids are not the tokenizer's (data_pipeline.shards.tokenizer_match).
    """
    from data_pipeline.shards.tokenizer_match import check_tokenizer_matches
    from data_pipeline.tokenizer.load import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    if tokenizer.fingerprint != fingerprint:
        raise CheckpointError(
            f"{os.path.join(tokenizer_dir, '')} has fingerprint {tokenizer.fingerprint[:12]} but the shards "
            f"were built with {fingerprint[:12]} (manifest.json): the tokenizer was replaced after the "
            "build; restore it or rebuild the shards"
        )
    if vocab_size is not None:
        check_tokenizer_matches(tokenizer, vocab_size, special_ids or {})
    return list(tokenizer.files)
