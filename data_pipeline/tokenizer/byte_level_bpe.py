"""Train a byte-level BPE tokenizer as RoBERTa's (GPT-2's) and write it as a `RobertaTokenizer` directory.

The pipeline is exactly the one `transformers`' `RobertaTokenizer` builds from a vocabulary and merges:
no normaliser (case and accents are kept), the ByteLevel pre-tokenizer with GPT-2's split regex and
`add_prefix_space=False` (RoBERTa's: the first word of a text has no 'Ġ', every later word carries it),
the ByteLevel decoder and the `<s> A </s></s> B </s>` post-processor. The specials are RoBERTa's tokens:
`<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3 as in RoBERTa, and `<mask>` 4 (RoBERTa's is its last id; here
it follows the others, as in Hugging Face's RoBERTa-from-scratch recipe). `<mask>` takes the space
before it (lstrip), as RoBERTa's does, so "a <mask> b" tokenizes as a masked pretraining row looks.

Training is deterministic: the 256 byte symbols are the alphabet (sorted by the trainer), no
continuation prefix adds symbols in the order words are met, and merges are chosen by (count, pair ids),
a total order; two trainings on the same text give byte-equal files (tested).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers

from data_pipeline.errors import DataError

# RoBERTa's special tokens in id order (ids 0..4).
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + BYTE_ALPHABET_SIZE + 1  # specials, every byte, one merge


def check_vocab_size(vocab_size: int) -> None:
    """Raise DataError when `vocab_size` cannot hold the specials, every byte and one merge."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise DataError(
            f"vocab_size {vocab_size} is too small for a byte-level BPE: it needs at least {MIN_VOCAB_SIZE} "
            f"({len(SPECIAL_TOKENS)} specials, {BYTE_ALPHABET_SIZE} bytes and one merge)"
        )


def train_byte_level_bpe(texts: Iterator[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE model of `vocab_size` entries (specials and the 256 bytes included) trained on
    `texts`; only its vocabulary and merges are kept (`write_roberta_dir` builds the rest).

    Raises DataError when vocab_size < MIN_VOCAB_SIZE.
    """
    check_vocab_size(vocab_size)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return backend


def write_roberta_dir(backend: Tokenizer, out_dir: str) -> None:
    """Save the vocabulary and merges of the trained `backend` into `out_dir` as a `RobertaTokenizer` dir
    (tokenizer.json, tokenizer_config.json, special_tokens_map.json): `AutoTokenizer` loads it as
    RobertaTokenizerFast, `load_tokenizer` with cls=<s>, sep=</s>, pad=<pad>, unk=<unk>, mask=<mask>."""
    from transformers import RobertaTokenizer

    model = json.loads(backend.to_str())["model"]
    vocab = model["vocab"]
    assert [vocab[token] for token in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS))), vocab
    tokenizer = RobertaTokenizer(
        vocab=vocab,
        merges=[tuple(merge) for merge in model["merges"]],
        add_prefix_space=False,
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True),
    )
    tokenizer.save_pretrained(out_dir)
    # transformers 5 keeps the specials in tokenizer_config.json only; older tools look here.
    roles = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
    specials = {f"{role}_token": str(getattr(tokenizer, f"{role}_token")) for role in roles}
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w", encoding="utf-8") as fh:
        json.dump(specials, fh, indent=2, sort_keys=True)
