"""Load our tokenizer or any Hugging Face tokenizer directory for the pipeline; `SpecialIds`.

`LoadedTokenizer.encode_batch` is the pipeline's tokenizer call: ids plus word-start flags, with saved
truncation/padding and special-token matching switched off. Training lives in `tokenizer_training`
(`train_tokenizer` is re-exported here, so `data_pipeline.tokenizer.load` is the one import users need).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from tokenizers import Tokenizer

from data_pipeline.errors import DataError
from data_pipeline.ingest.input_files import special_file_kind
from data_pipeline.tokenizer.hf_dir import ROLES, load_without_transformers
from data_pipeline.tokenizer.training import KINDS, SENTENCEPIECE_MODEL_FILE, SPECIAL_TOKENS, train_tokenizer

__all__ = ["KINDS", "SPECIAL_TOKENS", "LoadedTokenizer", "SpecialIds", "load_tokenizer", "train_tokenizer"]

# The files that make up a tokenizer directory: hashed for the fingerprint and copied by save_copy.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    SENTENCEPIECE_MODEL_FILE,
)


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens every MLM tokenizer needs."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    def to_dict(self) -> dict:
        """{'pad': id, 'unk': id, 'cls': id, 'sep': id, 'mask': id} (the manifest's special_ids)."""
        return asdict(self)


# ------------------------------------------------------------------------------------------- loading


class LoadedTokenizer:
    """A fast tokenizer ready for the pipeline: truncation, padding and special-token matching disabled.

    Attributes: path (the directory), backend (`tokenizers.Tokenizer`), special_ids (`SpecialIds`),
    vocab_size (including added tokens), fingerprint (sha256 over the tokenizer files), word_marker_id
    (the id of a bare Metaspace '▁' token, for SentencePiece-style tokenizers; else None).
    """

    def __init__(self, path: str, backend: Tokenizer, special_ids: SpecialIds, files: list[str]) -> None:
        """Wrap `backend` loaded from `path`; `files` are the tokenizer files found there."""
        self.path = path
        self.backend = _configure(backend)
        self.special_ids = special_ids
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.files = files
        self.fingerprint = _fingerprint(path, files)
        spec = json.loads(backend.to_str())
        self._word_start_table = _word_start_table(backend, spec)
        marker = _metaspace_marker(spec)
        self.word_marker_id = backend.token_to_id(marker) if marker is not None else None

    def encode_batch(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per text: (token ids as uint32 without special tokens, word_start uint8 flags).

        word_start is 1 where a token begins a word of the tokenizer's pre-tokenizer and on the first
        token of every text. WordPiece (no '##' prefix) and Metaspace/SentencePiece ('▁' prefix) tokenizers
        answer from a per-id lookup table (same flags as `word_ids`, vectorised); any other tokenizer
        (e.g. byte-level BPE) uses the encodings' `word_ids`.
        """
        if not texts:
            return []
        if self._word_start_table is not None:  # no offsets needed: the faster call (same ids)
            encodings = self.backend.encode_batch_fast(texts, add_special_tokens=False)
        else:
            encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        ids, starts, ends = self._ids_and_starts(encodings)
        return list(zip(np.split(ids, ends[:-1]), np.split(starts, ends[:-1]), strict=True))

    def encode_batch_with_offsets(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per text: (ids, word_start) as `encode_batch`, plus each token's start offset in the text
        (int64, in characters), from the slower encode call that tracks offsets."""
        if not texts:
            return []
        encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        ids, starts, ends = self._ids_and_starts(encodings)
        offsets = np.fromiter((o[0] for e in encodings for o in e.offsets), dtype=np.int64, count=len(ids))
        parts = (np.split(a, ends[:-1]) for a in (ids, starts, offsets))
        return list(zip(*parts, strict=True))

    def _ids_and_starts(self, encodings: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All encodings' ids and word starts, concatenated, and the end index of each encoding."""
        lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
        total = int(lengths.sum())
        ids = np.fromiter(
            itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.uint32, count=total
        )
        if self._word_start_table is not None:
            starts = self._word_start_table[ids]
        else:
            starts = _word_starts_from_word_ids(encodings, total)
        ends = np.cumsum(lengths)
        starts[(ends - lengths)[lengths > 0]] = 1  # the first token of every text starts a word
        return ids, starts, ends

    def __getstate__(self) -> dict:
        # tokenizers' own pickling drops encode_special_tokens: send JSON and configure again on arrival.
        return {**self.__dict__, "backend": self.backend.to_str()}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, backend=_configure(Tokenizer.from_str(state["backend"])))

    def save_copy(self, dst_dir: str) -> None:
        """Copy the tokenizer files into `dst_dir` (created); the copy has the same fingerprint."""
        os.makedirs(dst_dir, exist_ok=True)
        for name in self.files:
            shutil.copyfile(os.path.join(self.path, name), os.path.join(dst_dir, name))


def _configure(backend: Tokenizer) -> Tokenizer:
    # Saved truncation/padding (common in HF checkpoints) would silently cut or pad documents.
    backend.no_truncation()
    backend.no_padding()
    # Literal "[MASK]" or "<s>" inside a document is text, not a special token.
    backend.encode_special_tokens = True
    return backend


def load_tokenizer(path: str) -> LoadedTokenizer:
    """Load our tokenizer dir or any Hugging Face tokenizer dir (tokenizer.json or vocab files + config).

    A dir with a tokenizer.json of a class `tokenizer_dir` replicates (generic, BERT, RoBERTa, XLM-R,
    ALBERT) loads without importing transformers, with the ids and specials `AutoTokenizer` gives; any
    other dir goes through `AutoTokenizer`. Roles the dir leaves undefined are taken from added tokens
    with the conventional names ([PAD] [UNK] [CLS] [SEP] [MASK] or <pad> <unk> <s> </s> <mask>).

    Raises:
        DataError: `path` is not a directory or holds no tokenizer files; transformers cannot load it;
            it has no fast tokenizer; it lacks a pad/unk/cls/sep/mask token (named in the message).
    """
    if not os.path.isdir(path):
        raise DataError(f"tokenizer directory {path} does not exist or is not a directory")
    for name in TOKENIZER_FILES:  # a FIFO would block the load; taken for absent, it changes the tokenizer
        kind = special_file_kind(os.path.join(path, name))
        if kind is not None:
            where = os.path.join(path, name)
            raise DataError(f"{where}: is a {kind}, not a regular file; replace it by the file it stands for")
    files = [name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(path, name))]
    if not any(
        name in files
        for name in ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model")
    ):
        raise DataError(
            f"{path} is not a tokenizer directory: no tokenizer.json, vocab.txt, vocab.json or *.model"
        )
    backend, tokens = load_without_transformers(path) or _load_with_transformers(path)
    _infer_missing_specials(backend, tokens)
    ids = {}
    for role in ROLES:
        token = tokens.get(role)
        token_id = backend.token_to_id(token) if token is not None else None
        if token_id is None:
            what = (
                f"{role} token"
                if token is None
                else f"{role} token {token!r}, which is not in the vocabulary"
            )
            raise DataError(
                f"{path}: tokenizer lacks a {what}; MLM pretraining needs [PAD] [UNK] [CLS] [SEP] [MASK] "
                "equivalents (set them in tokenizer_config.json)"
            )
        ids[role] = token_id
    if _needs_model_config(path, files):
        files.append("config.json")
    return LoadedTokenizer(path, backend, SpecialIds(**ids), files)


def _load_with_transformers(path: str) -> tuple[Tokenizer, dict[str, str]]:
    """(backend, special tokens by role) of any HF tokenizer dir, through `AutoTokenizer`."""
    from transformers import AutoTokenizer

    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises many types (OSError, ValueError, KeyError...)
        raise DataError(
            f"{path}: transformers cannot load this tokenizer ({type(exc).__name__}: {exc})"
        ) from exc
    if not getattr(hf_tokenizer, "is_fast", False):
        raise DataError(f"{path}: no fast (Rust) tokenizer available for {type(hf_tokenizer).__name__}")
    backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())  # our own copy to reconfigure
    tokens = {}
    for role in ("pad", "unk", "cls", "sep", "mask"):
        token = getattr(hf_tokenizer, f"{role}_token", None)
        if token is not None:
            tokens[role] = str(token)
    return backend, tokens


def _needs_model_config(path: str, files: list[str]) -> bool:
    """Old HF dirs name no tokenizer_class; AutoTokenizer then picks the class from config.json's model_type
    (a BERT class rebuilds the normaliser), so a copy of the tokenizer must carry config.json too."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        return False
    if "tokenizer_config.json" not in files:
        return True
    with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    return not (isinstance(config, dict) and "tokenizer_class" in config)


# Conventional spellings of each special token (BERT's, then RoBERTa's), for a tokenizer.json that defines
# its added tokens but no roles (no tokenizer_config.json): AutoTokenizer leaves those roles empty.
_CONVENTIONAL_SPECIALS = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
    "mask": ("[MASK]", "<mask>"),
}


def _infer_missing_specials(backend: Tokenizer, tokens: dict[str, str]) -> None:
    """Fill roles the directory leaves undefined from the backend's added tokens with a conventional
    name, and mark those tokens special (so that a literal "[MASK]" in a document stays text)."""
    added = {str(t): t for t in backend.get_added_tokens_decoder().values()}
    for role, spellings in _CONVENTIONAL_SPECIALS.items():
        if role in tokens:
            continue
        found = next((added[s] for s in spellings if s in added), None)
        if found is None:
            continue
        tokens[role] = str(found)
        if not found.special:
            found.special = True
            backend.add_tokens([found])


def _word_start_table(backend: Tokenizer, spec: dict) -> np.ndarray | None:
    """uint8 flag per id (1: the token starts a word), for tokenizers that mark pieces in the token itself.

    WordPiece marks continuations ('##ing'); a Metaspace pre-tokenizer (SentencePiece style) marks word
    starts ('▁the'). For other tokenizers there is no such rule: None (use word_ids).
    """
    model = spec.get("model") or {}
    marker = _metaspace_marker(spec)
    if model.get("type") == "WordPiece":
        prefix = model.get("continuing_subword_prefix") or "##"

        def starts_word(token: str) -> bool:
            return not token.startswith(prefix)
    elif marker is not None:

        def starts_word(token: str) -> bool:
            return token.startswith(marker)
    else:
        return None
    vocab = backend.get_vocab(with_added_tokens=True)
    table = np.zeros(max(vocab.values()) + 1, dtype=np.uint8)
    for token, token_id in vocab.items():
        table[token_id] = starts_word(token)
    return table


def _metaspace_marker(spec: dict) -> str | None:
    """The word-start marker ('▁') of a Metaspace pre-tokenizer in a tokenizer.json spec, or None."""
    pre_tokenizer = spec.get("pre_tokenizer") or {}
    for step in pre_tokenizer.get("pretokenizers", [pre_tokenizer]):
        if step.get("type") == "Metaspace":
            return step.get("replacement", "▁")
    return None


def _word_starts_from_word_ids(encodings: list, total: int) -> np.ndarray:
    """Flags from `word_ids`: 1 where the word index changes; tokens without a word (None) count as starts."""
    try:
        words = np.fromiter(
            itertools.chain.from_iterable(e.word_ids for e in encodings), dtype=np.int64, count=total
        )
    except TypeError:  # None entries (added tokens): -1 marks them
        flat = itertools.chain.from_iterable(e.word_ids for e in encodings)
        words = np.fromiter((-1 if w is None else w for w in flat), dtype=np.int64, count=total)
    starts = np.ones(total, dtype=np.uint8)
    if total:
        np.not_equal(words[1:], words[:-1], out=starts[1:], casting="unsafe")
        starts[words < 0] = 1
    return starts


def _fingerprint(path: str, files: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0")
        with open(os.path.join(path, name), "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()
