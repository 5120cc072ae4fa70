"""Words -> model inputs for token classification: sub-tokens from the fast tokenizer's `word_ids()`, the
word's tag on its first sub-token (-100, ignored by the loss, on the rest and on special tokens), and a
sentence longer than `max_seq_len` split into windows of whole words rather than truncated.

One rule for every tokenizer the `Auto*` classes load: WordPiece (`##` continuations), SentencePiece (a
word may start with a lone `▁` piece: that piece carries the tag) and byte-level BPE, which is given a
prefix space first (`with_prefix_space`): without it a word of a pre-split sentence is encoded as if it
were glued to the previous one (`value`, not `Ġvalue`), unlike any text the model was pretrained on.
Chinese given one character per word is one word per character like any other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

IGNORED = -100  # the label the loss ignores (PyTorch's CrossEntropyLoss default ignore_index)


def with_prefix_space(tokenizer):
    """`tokenizer` with every byte-level pre-tokenizer set to add a prefix space (what transformers asks for
    pre-split words: `add_prefix_space=True`); other tokenizers are returned unchanged. The backend is
    changed in place, so load a fresh tokenizer for this."""
    from tokenizers import Tokenizer

    backend = tokenizer.backend_tokenizer
    spec = json.loads(backend.to_str())

    def patch(node) -> bool:
        if isinstance(node, dict):
            changed = False
            if node.get("type") == "ByteLevel" and node.get("add_prefix_space") is False:
                node["add_prefix_space"] = True
                changed = True
            return any([changed] + [patch(v) for v in node.values()])
        if isinstance(node, list):
            return any([patch(v) for v in node])
        return False

    if spec.get("pre_tokenizer") and patch(spec["pre_tokenizer"]):
        backend.pre_tokenizer = Tokenizer.from_str(json.dumps(spec)).pre_tokenizer
        if hasattr(tokenizer, "add_prefix_space"):
            tokenizer.add_prefix_space = True
    return tokenizer


@dataclass
class Window:
    """One model input: words [start, start + len(first_token)) of sentence `sentence`."""

    sentence: int
    start: int
    input_ids: list[int]
    labels: list[int]
    first_token: list[int]
    """Per word, the position of its first sub-token in input_ids (-1: the word has none)."""


@dataclass
class EncodedWords:
    """A split encoded as windows, with the counts of what the encoding changed."""

    windows: list[Window]
    sentences: int
    counts: dict = field(default_factory=dict)
    """split_sentences (sentences spread over 2+ windows), windows, words_cut (a word longer than a
    whole window: its sub-tokens past the window are dropped), words_without_tokens (the tokenizer made
    nothing of the word, e.g. a control character: it is predicted O)."""

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        w = self.windows[i]
        return {"input_ids": w.input_ids, "attention_mask": [1] * len(w.input_ids), "labels": w.labels}


def _plan(lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """[(start, end)) word ranges, greedily filled up to `budget` sub-tokens each; a word longer than the
    budget is a window of its own."""
    ranges, start, used = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and used + n > budget:
            ranges.append((start, i))
            start, used = i, 0
        used += n
    ranges.append((start, len(lengths)))
    return ranges


def encode_words(
    tokenizer, sentences: list[list[str]], tag_ids: list[list[int]], max_seq_len: int
) -> EncodedWords:
    """Encode `sentences` (lists of words) with their tag ids into windows of at most `max_seq_len`
    sub-tokens (special tokens included). Raises ValueError when `max_seq_len` leaves no room for a word."""
    budget = max_seq_len - tokenizer.num_special_tokens_to_add(pair=False)
    if budget < 1:
        raise ValueError(f"max_seq_len {max_seq_len} leaves no room next to the special tokens")
    bare = tokenizer(sentences, is_split_into_words=True, add_special_tokens=False)
    plans, cut = [], 0
    for s, words in enumerate(sentences):
        lengths = [0] * len(words)
        for word in bare.word_ids(s):
            if word is not None:
                lengths[word] += 1
        cut += sum(n > budget for n in lengths)
        plans.extend((s, start, end) for start, end in _plan(lengths, budget))
    pieces = [sentences[s][start:end] for s, start, end in plans]
    encoded = tokenizer(pieces, is_split_into_words=True, truncation=True, max_length=max_seq_len)
    windows, empty = [], 0
    for i, (s, start, end) in enumerate(plans):
        ids = encoded["input_ids"][i]
        first = [-1] * (end - start)
        labels = [IGNORED] * len(ids)
        for position, word in enumerate(encoded.word_ids(i)):
            if word is not None and first[word] < 0:
                first[word] = position
                labels[position] = tag_ids[s][start + word]
        empty += first.count(-1)
        windows.append(Window(s, start, ids, labels, first))
    split = len({s for s, start, _ in plans if start > 0})
    counts = {
        "split_sentences": split,
        "windows": len(windows),
        "words_cut": cut,
        "words_without_tokens": empty,
    }
    return EncodedWords(windows, len(sentences), counts)


def words_tags(
    encoded: EncodedWords, predictions: list[list[int]], sentence_lengths: list[int]
) -> list[list[int]]:
    """Per sentence, the predicted tag id of every word: `predictions[i][p]` is window i's tag id at
    position p; a word without sub-tokens gets id 0 (O)."""
    out = [[0] * n for n in sentence_lengths]
    for window, predicted in zip(encoded.windows, predictions, strict=True):
        for k, position in enumerate(window.first_token):
            if position >= 0:
                out[window.sentence][window.start + k] = int(predicted[position])
    return out
