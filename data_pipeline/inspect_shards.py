"""Helpers behind `mlm-data inspect` and `mlm-data merge`."""

from __future__ import annotations

import os
import shutil

from data_pipeline.errors import DataError
from data_pipeline.manifest import MANIFEST_NAME, Manifest
from data_pipeline.shards import SPLITS, ShardReader


def summary(shards_dir: str) -> dict:
    """Counts of a shards dir: sequences, tokens, seq_len, vocab_size, mode, per-split rows/tokens/shards."""
    m = Manifest.load(shards_dir)
    return {
        "sequences": m.rows,
        "tokens": m.tokens,
        "seq_len": m.seq_len,
        "vocab_size": m.tokenizer["vocab_size"],
        "mode": m.mode,
        "id_dtype": m.id_dtype,
        "fill_ratio": m.tokens / max(1, m.rows * m.seq_len),
        "splits": {
            name: {"sequences": s["rows"], "tokens": s["tokens"], "shards": len(s["shards"])}
            for name, s in m.splits.items()
        },
        "counts": m.counts,
    }


def decoded_samples(shards_dir: str, n: int, split: str = "train") -> list[str]:
    """The first `n` rows of `split` decoded token by token; '|' marks a word start, pads are omitted."""
    from tokenizers import Tokenizer

    reader = ShardReader(shards_dir, split)
    tok_path = os.path.join(shards_dir, "tokenizer", "tokenizer.json")
    backend = Tokenizer.from_file(tok_path) if os.path.exists(tok_path) else None
    out = []
    for i in range(min(n, len(reader))):
        row = reader[i]
        pieces = []
        for pos in range(int(row["length"])):
            token_id = int(row["input_ids"][pos])
            text = backend.id_to_token(token_id) if backend is not None else str(token_id)
            pieces.append(("|" if row["word_start"][pos] else "") + str(text))
        label = f" pair_label={int(row['pair_label'])}" if reader.has_pairs else ""
        out.append(f"[{split} {i}{label}] " + " ".join(pieces))
    return out


def merge_parts(part_dirs: list[str], out: str) -> Manifest:
    """Join partition builds into `out`: shards hard-linked (copied across filesystems), one manifest.

    Raises DataError naming the part whose tokenizer, seq_len, mode or id dtype differs from the first
    part's, a part that is unfinished, or an `out` that already holds a manifest.
    """
    if not part_dirs:
        raise DataError("merge needs at least one partition directory")
    manifests = [Manifest.load(p) for p in part_dirs]
    first = manifests[0]
    for path, m in zip(part_dirs, manifests, strict=True):
        for key in ("seq_len", "mode", "id_dtype"):
            mine, theirs = getattr(m, key), getattr(first, key)
            if mine != theirs:
                raise DataError(
                    f"{path}: {key} {mine!r} differs from {part_dirs[0]}'s {theirs!r}; "
                    "only partitions of one build can be merged"
                )
        if m.tokenizer["hash"] != first.tokenizer["hash"]:
            raise DataError(f"{path}: built with a different tokenizer than {part_dirs[0]}; cannot merge")
    if os.path.exists(os.path.join(out, MANIFEST_NAME)):
        raise DataError(f"{out} already holds a manifest; choose an empty --out")
    os.makedirs(out, exist_ok=True)
    splits = {}
    for split in SPLITS:
        shards = []
        for path, m in zip(part_dirs, manifests, strict=True):
            for shard in m.splits[split]["shards"]:
                name = f"{split}-{len(shards):05d}.arrow"
                _link(os.path.join(path, shard["file"]), os.path.join(out, name))
                shards.append({**shard, "file": name})
        splits[split] = {
            "rows": sum(s["rows"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards),
            "shards": shards,
        }
    counts: dict[str, int] = {}
    for m in manifests:
        for key, n in m.counts.items():
            counts[key] = counts.get(key, 0) + n
    tok_dst = os.path.join(out, "tokenizer")
    if not os.path.exists(tok_dst):
        shutil.copytree(os.path.join(part_dirs[0], first.tokenizer["dir"]), tok_dst)
    merged = Manifest(
        seq_len=first.seq_len,
        mode=first.mode,
        id_dtype=first.id_dtype,
        tokenizer=first.tokenizer,
        splits=splits,
        sources=[s for m in manifests for s in m.sources],
        counts=counts,
        build={**first.build, "partition": None, "merged_from": [os.path.abspath(p) for p in part_dirs]},
    )
    merged.save(out)
    return merged


def _link(src: str, dst: str) -> None:
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst + ".tmp")
        os.replace(dst + ".tmp", dst)
