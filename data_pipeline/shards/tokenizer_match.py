"""Whether a shards directory's tokenizer dir is the tokenizer its manifest describes: the manifest's
`tokenizer.vocab_size` and `tokenizer.special_ids` against what the tokenizer itself gives. The one copy
of the rule, for `mlm-data verify` and the trainer (pretrain/checkpoint/identity.py `tokenizer_files`,
which loads the shards' tokenizer once): a manifest edited to `special_ids.mask=7` (an ordinary token)
would train a model that never sees [MASK]; a `vocab_size` far above the tokenizer's an embedding of
rows no id reaches.

The cheap checks that need no tokenizer (every special id below `vocab_size`, each role its own id) are
in `manifest_schema`, run on every load.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from data_pipeline.errors import DataError
from data_pipeline.shards.manifest_schema import SPECIAL_ROLES

REBUILD = "the manifest does not describe its tokenizer: rebuild the shards with `mlm-data build`"


def tokenizer_mismatch(tokenizer, vocab_size: int, special_ids: Mapping[str, int]) -> str | None:
    """The first difference between the manifest's `vocab_size` / `special_ids` and the loaded
    `tokenizer` (a `LoadedTokenizer`), naming the key and both values; None when they agree."""
    where = os.path.join(tokenizer.path, "")
    if tokenizer.vocab_size != vocab_size:
        return (
            f"the manifest's tokenizer.vocab_size is {vocab_size} but the tokenizer {where} has "
            f"{tokenizer.vocab_size} tokens"
        )
    ours = tokenizer.special_ids.to_dict()
    for role in SPECIAL_ROLES:
        if role in special_ids and special_ids[role] != ours[role]:
            return (
                f"the manifest's tokenizer.special_ids.{role} is {special_ids[role]} but the tokenizer "
                f"{where} has {ours[role]}"
            )
    return None


def check_tokenizer_matches(tokenizer, vocab_size: int, special_ids: Mapping[str, int]) -> None:
    """Raise DataError (one line: the key, the manifest's value, the tokenizer's) on `tokenizer_mismatch`."""
    problem = tokenizer_mismatch(tokenizer, vocab_size, special_ids)
    if problem is not None:
        raise DataError(f"{problem}; {REBUILD}")


def shards_tokenizer_problem(shards_dir: str, manifest) -> str | None:
    """`mlm-data verify`'s check of the tokenizer dir the build recorded (`manifest.tokenizer["dir"]`):
    it loads, has the manifest's fingerprint, vocab_size and special ids; else the problem, or None."""
    from data_pipeline.tokenizer.load import load_tokenizer

    recorded = manifest.tokenizer
    path = os.path.join(shards_dir, recorded.get("dir", "tokenizer"))
    try:
        tokenizer = load_tokenizer(path)
    except DataError as exc:
        return str(exc)
    if tokenizer.fingerprint != recorded["hash"]:
        return (
            f"{os.path.join(path, '')} has fingerprint {tokenizer.fingerprint[:12]} but the manifest's "
            f"tokenizer.hash is {recorded['hash'][:12]}: the tokenizer was replaced after the build; restore "
            "it or rebuild the shards"
        )
    problem = tokenizer_mismatch(tokenizer, recorded["vocab_size"], recorded["special_ids"])
    return None if problem is None else f"{problem}; {REBUILD}"
