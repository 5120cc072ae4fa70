"""Checkpoint files we own: the completion record, trainer state (JSON + safetensors) and RNG states.

Nothing here unpickles: trainer state is JSON with tensors/arrays moved into a safetensors file and
referenced by key, so a planted pickle payload is refused by the safetensors parser instead of executed.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from data_pipeline.integrity import files_sha256, fsync_file, size_problem, write_atomic

COMPLETE_FILE = "COMPLETE.json"
TRAINER_STATE_JSON = "trainer_state.json"
TRAINER_STATE_TENSORS = "trainer_state.safetensors"
RECORD_VERSION = 2
CONFIG_FILE = "config.yaml"  # the resolved config of the run that wrote the checkpoint
HF_CONFIG_FILE = "hf_config.json"  # the model's transformers config: export rebuilds the model from it
TOKENIZER_DIR = "tokenizer"  # a copy of the shards' tokenizer the weights were trained with
_TENSOR_REF = "__tensor__"
_NDARRAY_REF = "__ndarray__"
_TUPLE = "__tuple__"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the file and what to do."""


def list_files(tag_dir: str) -> list[str]:
    """Every file under `tag_dir` (relative, '/'-separated, sorted) except the completion record.

    Raises CheckpointError naming an entry that is a symlink or neither a file nor a directory: a
    checkpoint holds regular files only, so nothing in it can point outside it.
    """
    out = []
    for root, dirs, files in os.walk(tag_dir):
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.path.islink(path) or not (os.path.isfile(path) or os.path.isdir(path)):
                raise CheckpointError(
                    f"{path} is a symlink or a special file; a checkpoint holds regular files only"
                )
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), tag_dir).replace(os.sep, "/")
            if rel != COMPLETE_FILE:
                out.append(rel)
    return sorted(out)


def file_entries(directory: str) -> dict[str, dict]:
    """{relative path: {"bytes", "sha256"}} of every file under `directory` (see `list_files`)."""
    names = list_files(directory)
    paths = [os.path.join(directory, rel) for rel in names]
    entries = zip(names, paths, files_sha256(paths), strict=True)
    return {rel: {"bytes": os.path.getsize(path), "sha256": digest} for rel, path, digest in entries}


def write_complete_record(
    tag_dir: str,
    *,
    step: int,
    world_size: int,
    config_hash: str,
    identity: dict | None = None,
    master_param_groups: list[list[str]] | None = None,
) -> dict:
    """Checksum every file of `tag_dir` and write COMPLETE.json atomically; returns the record.

    `identity` (JSON values) says what the weights belong to (see pretrain/checkpoint/identity.py);
    `master_param_groups` names the parameters of each optimizer group where DeepSpeed's files do not
    (ZeRO-0 with 16-bit weights: the fp32 master copies are stored by group position only).
    """
    record = {
        "version": RECORD_VERSION,
        "step": step,
        "world_size": world_size,
        "config_hash": config_hash,
        "identity": identity or {},
        "files": file_entries(tag_dir),
    }
    if master_param_groups is not None:
        record["master_param_groups"] = master_param_groups
    write_atomic(os.path.join(tag_dir, COMPLETE_FILE), json.dumps(record, indent=1, sort_keys=True))
    return record


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_record(record_path: str) -> dict:
    """The record at `record_path`, every field type-checked; raises CheckpointError naming the field."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{record_path}: {what}; the checkpoint is unusable (delete it)")

    try:
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise bad(f"unreadable or not JSON ({e})") from e
    if not isinstance(record, dict):
        raise bad(f"the record is a {type(record).__name__}, not an object")
    if record.get("version") != RECORD_VERSION:
        raise bad(
            f"record version {record.get('version')!r}, this mlm-pretrain reads version {RECORD_VERSION} "
            "(older records do not say which model, tokenizer and data the weights belong to)"
        )
    for key, ok in (
        ("step", lambda v: _is_int(v) and v >= 0),
        ("world_size", lambda v: _is_int(v) and v >= 1),
        ("config_hash", lambda v: isinstance(v, str)),
        ("identity", lambda v: isinstance(v, dict)),
        ("files", lambda v: isinstance(v, dict) and v),
    ):
        if key not in record or not ok(record[key]):
            raise bad(
                f"{key!r} is {record.get(key)!r}"
                + (" (a checkpoint lists its files)" if key == "files" else "")
            )
    for rel, meta in record["files"].items():
        parts = rel.split("/")
        if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
            raise bad(f"lists {rel!r}, which is not a plain path inside the checkpoint")
        if not (
            isinstance(meta, dict)
            and _is_int(meta.get("bytes"))
            and isinstance(meta.get("sha256"), str)
            and len(meta["sha256"]) == 64
        ):
            raise bad(f"the entry of {rel!r} is {meta!r}, not {{'bytes': int, 'sha256': hex digest}}")
    groups = record.get("master_param_groups")
    if groups is not None and not (
        isinstance(groups, list)
        and all(isinstance(g, list) and all(isinstance(n, str) for n in g) for g in groups)
    ):
        raise bad("'master_param_groups' is not a list of lists of parameter names")
    return record


def required_files(world_size: int) -> list[str]:
    """The files every checkpoint of `world_size` ranks holds besides DeepSpeed's (ours)."""
    return [TRAINER_STATE_JSON] + [f"rng/rank-{r:05d}.json" for r in range(world_size)]


def check_listed_files(directory: str, files: dict, source: str) -> None:
    """`directory` must hold exactly `files` ({relative path: {"bytes", "sha256"}}), each with its size
    and sha256 (`source` names the list in messages). Raises CheckpointError naming the first file at
    fault: an unlisted one (planted, or left by something else), a missing, truncated or altered one.
    """
    on_disk = list_files(directory)
    unlisted = [rel for rel in on_disk if rel not in files]
    if unlisted:
        raise CheckpointError(
            f"{os.path.join(directory, unlisted[0])} is not listed in {source}: it was not written by the "
            f"save that {source} records ({len(unlisted)} unlisted file(s)); refusing the whole directory. "
            "Delete the file if you put it there, otherwise delete the checkpoint"
        )
    present = set(on_disk)
    listed = [(rel, os.path.join(directory, rel), meta) for rel, meta in sorted(files.items())]
    for rel, path, meta in listed:  # the cheap checks first, for every file
        if rel not in present:
            raise CheckpointError(f"{path} is listed in {source} but missing")
        problem = size_problem(path, meta["bytes"], source)
        if problem is not None:
            raise CheckpointError(f"{path}: {problem}: truncated")
    digests = files_sha256([path for _, path, _ in listed])
    for (_, path, meta), digest in zip(listed, digests, strict=True):
        if digest != meta["sha256"]:
            raise CheckpointError(f"{path} fails its sha256 check in {source}: the file is corrupt")


def validate_checkpoint(tag_dir: str) -> dict:
    """Check `tag_dir` against its COMPLETE.json; returns the record.

    A checkpoint is valid only if its directory holds exactly the files its record lists, each with the
    recorded size and sha256, and the record lists our trainer state, every rank's RNG state and
    DeepSpeed's model states. Raises CheckpointError naming the offending file or record field: no
    record (an interrupted save), a malformed or empty record, an unlisted, missing, truncated or
    altered file.
    """
    record_path = os.path.join(tag_dir, COMPLETE_FILE)
    if not os.path.isfile(record_path):
        raise CheckpointError(f"{tag_dir} has no {COMPLETE_FILE}: the save was interrupted; it is incomplete")
    record = _parse_record(record_path)
    files = record["files"]
    missing = [rel for rel in required_files(record["world_size"]) if rel not in files]
    if not any(rel.endswith("model_states.pt") and "/" not in rel for rel in files):
        missing.append("*model_states.pt")
    if missing:
        raise CheckpointError(
            f"{record_path} does not list {', '.join(missing)}: not a complete checkpoint of "
            f"{record['world_size']} rank(s); the checkpoint is unusable (delete it)"
        )
    check_listed_files(tag_dir, files, COMPLETE_FILE)
    return record


def _split_tensors(obj, tensors: dict[str, torch.Tensor], path: str):
    """A JSON-able copy of `obj` with tensors/arrays moved into `tensors` (keyed by their path)."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {_TENSOR_REF: path}
    if isinstance(obj, np.ndarray):
        # safetensors has no uint32; int64 holds every value of the integer types we store
        arr = obj.astype(np.int64) if obj.dtype == np.uint32 else obj
        tensors[path] = torch.from_numpy(np.ascontiguousarray(arr))
        return {_NDARRAY_REF: path, "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"trainer state key {path}.{k!r} is not a string")
        return {k: _split_tensors(v, tensors, f"{path}.{k}") for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {_TUPLE: [_split_tensors(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_split_tensors(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(f"trainer state value at {path} has type {type(obj).__name__}; use JSON types or tensors")


def _join_tensors(obj, tensors: dict[str, torch.Tensor]):
    """Inverse of _split_tensors."""
    if isinstance(obj, dict):
        if _TENSOR_REF in obj:
            return tensors[obj[_TENSOR_REF]]
        if _NDARRAY_REF in obj:
            return tensors[obj[_NDARRAY_REF]].numpy().astype(obj["dtype"])
        if _TUPLE in obj:
            return tuple(_join_tensors(v, tensors) for v in obj[_TUPLE])
        return {k: _join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_tensors(v, tensors) for v in obj]
    return obj


def save_state(state: dict, directory: str, stem: str) -> None:
    """Write `state` as `stem.json` (+ `stem.safetensors` for its tensors/arrays), each fsynced."""
    tensors: dict[str, torch.Tensor] = {}
    doc = _split_tensors(state, tensors, "state")
    # floats keep full precision: json writes repr(float), which round-trips exactly
    write_atomic(os.path.join(directory, f"{stem}.json"), json.dumps(doc, indent=1, sort_keys=True))
    if tensors:
        path = os.path.join(directory, f"{stem}.safetensors")
        save_file(tensors, path)  # under its final name: only COMPLETE.json, written last, makes it count
        fsync_file(path)


def load_state(directory: str, stem: str) -> dict:
    """Read what save_state wrote; raises CheckpointError naming the file when it is not JSON/safetensors."""
    json_path = os.path.join(directory, f"{stem}.json")
    try:
        with open(json_path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{json_path} is not a readable JSON trainer state ({e})") from e
    tensors: dict[str, torch.Tensor] = {}
    st_path = os.path.join(directory, f"{stem}.safetensors")
    if os.path.exists(st_path):
        try:
            tensors = load_file(st_path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"{st_path} is not a valid safetensors file ({e}); refusing to load it"
            ) from e
    try:
        return _join_tensors(doc, tensors)
    except KeyError as e:
        raise CheckpointError(f"{json_path} references tensor {e} missing from {st_path}") from e


def capture_rng_state() -> dict:
    """This process's Python, NumPy and torch (CPU and, if present, CUDA) RNG states."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": version, "internal": np.array(internal, dtype=np.int64), "gauss": gauss},
        "numpy": {
            "kind": np_state[0],
            "keys": np_state[1],
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = {str(i): s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return state


def restore_rng_state(state: dict) -> None:
    """Restore what capture_rng_state returned (CUDA states only when CUDA is present)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state["cuda"][str(i)] for i in range(len(state["cuda"]))])
