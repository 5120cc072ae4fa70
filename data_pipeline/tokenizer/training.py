"""Train a WordPiece, SentencePiece or byte-level BPE tokenizer and save it as a Hugging Face tokenizer dir.

The directory (tokenizer.json + tokenizer_config.json) loads with `transformers.AutoTokenizer` and with
`data_pipeline.tokenizer.load.load_tokenizer`; its specials are [PAD] [UNK] [CLS] [SEP] [MASK] = ids 0..4,
except for the byte-level BPE (`bpe`, RoBERTa's tokenizer: byte_level_bpe.py), a `RobertaTokenizer` dir
with RoBERTa's <s> <pad> </s> <unk> <mask>.
SentencePiece models are trained with the sentencepiece library and converted to the equivalent
`tokenizers` pipeline, so every kind encodes through the same fast path. Their Metaspace marks a word
start only where the text has one (the start and after whitespace, not after an added token) and
[MASK] absorbs the space before it, so text with [MASK] in it (fill-mask) tokenizes as masked
pretraining rows look: "x [MASK] y" -> ▁x [MASK] ▁y, "中文[MASK]测试" -> ▁中文 [MASK] 测试.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import logging
import os
import random
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from tqdm import tqdm

from data_pipeline.errors import DataError
from data_pipeline.ingest.clean import CleanConfig, Cleaner, split_text
from data_pipeline.ingest.report import BuildReport
from data_pipeline.ingest.sources import SourceFile, expand_inputs, iter_documents
from data_pipeline.integrity import commit_temp_dir
from data_pipeline.tokenizer import byte_level_bpe

logger = logging.getLogger(__name__)

KINDS = ("wordpiece", "sentencepiece-unigram", "sentencepiece-bpe", "bpe")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 in every tokenizer we train
# The trained SentencePiece model, kept beside tokenizer.json for tools that use the sentencepiece
# library (it segments normalised text exactly as tokenizer.json does).
SENTENCEPIECE_MODEL_FILE = "sentencepiece.model"
# Rough decompressed/on-disk size ratios, to pick a sampling rate before reading (see _training_texts).
_EXPANSION = {None: 1.0, "gz": 3.0, "bz2": 3.5, "zst": 3.5, "parquet": 2.0}
_SPM_MAX_SENTENCE_CHARS = 4000  # SentencePiece skips longer "sentences"; longer lines are split first


def train_tokenizer(
    inputs: Sequence[str],
    kind: str,
    vocab_size: int,
    out_dir: str,
    *,
    lowercase: bool = False,
    max_training_chars: int = 200_000_000,
    overwrite: bool = False,
    text_field: str = "text",
    one_per_line: bool = False,
    clean_config: CleanConfig | None = None,
    seed: int = 0,
    extensions: dict[str, str] | None = None,
    byte_fallback: bool = False,
    character_coverage: float = 0.9995,
) -> BuildReport:
    """Train a tokenizer on `inputs` (files/dirs/globs) and save it as an HF tokenizer dir at `out_dir`.

    kind: 'wordpiece' (HF tokenizers, BERT normaliser and pre-tokenizer), 'sentencepiece-unigram' or
    'sentencepiece-bpe' (sentencepiece library; NFKC + whitespace-collapsing normaliser), 'bpe' (RoBERTa's
    byte-level BPE, a RobertaTokenizer dir: no normaliser, so no `lowercase`). SentencePiece
    only: `byte_fallback` adds the 256 byte pieces, so a character outside the vocabulary becomes its
    UTF-8 bytes instead of [UNK] (rare CJK characters, emoji); `character_coverage` is the share of the
    training characters the alphabet must cover (the rest become [UNK], or bytes): SentencePiece's default
    0.9995 suits CJK's large alphabets, 1.0 small alphabets. The text is
    streamed through `sources` and `clean`; when the input looks larger than `max_training_chars`
    (estimated from file sizes) documents are sampled evenly over the whole input (deterministically,
    from `seed`), so every file contributes, and reading stops once the budget is reached. The
    directory is written to a temporary sibling and renamed into place.

    Returns the `BuildReport` of the text read (training_documents, training_chars, what was dropped).

    Raises:
        DataError: unknown kind; vocab_size too small/large for the text; byte_fallback or
            character_coverage given for wordpiece or bpe, or a coverage outside [0.98, 1]; lowercase for
            bpe; non-empty out_dir
            without overwrite=True; no text in the inputs; any bad input file (see `sources`).
    """
    if kind not in KINDS:
        raise DataError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind in ("wordpiece", "bpe") and (byte_fallback or character_coverage != 0.9995):
        raise DataError(f"byte fallback and character coverage are SentencePiece options (not for {kind})")
    if kind == "bpe" and lowercase:
        raise DataError(
            "--lowercase is not available for --kind bpe: RoBERTa's tokenizer has no normaliser (it keeps "
            "case); lowercase the corpus before training and building instead"
        )
    if not 0.98 <= character_coverage <= 1.0:
        raise DataError(
            f"character coverage {character_coverage} must be in [0.98, 1] (SentencePiece's range)"
        )
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise DataError(f"vocab_size {vocab_size} is too small")
    if kind == "bpe":
        byte_level_bpe.check_vocab_size(vocab_size)
    _check_out_dir(out_dir, overwrite)
    sources = expand_inputs(inputs, extensions)
    report = BuildReport()
    texts = _training_texts(
        sources, report, clean_config or CleanConfig(), max_training_chars, seed, text_field, one_per_line
    )
    first = next(texts, None)
    if first is None:
        raise DataError(f"no text to train a tokenizer on in {list(inputs)} (all documents empty or dropped)")
    texts = itertools.chain([first], texts)
    if kind == "bpe":
        backend = byte_level_bpe.train_byte_level_bpe(texts, vocab_size)
        write_files = functools.partial(byte_level_bpe.write_roberta_dir, backend)
    elif kind == "wordpiece":
        backend = _train_wordpiece(texts, vocab_size, lowercase)
        write_files = functools.partial(_write_generic_dir, backend, extra_files={})
    else:
        options = {"byte_fallback": byte_fallback, "character_coverage": character_coverage}
        backend, model_proto = _train_sentencepiece(
            texts, kind.split("-", 1)[1], vocab_size, lowercase, options
        )
        extra_files = {SENTENCEPIECE_MODEL_FILE: model_proto}
        write_files = functools.partial(_write_generic_dir, backend, extra_files=extra_files)
    logger.info("tokenizer trained: vocab %d, input %s", backend.get_vocab_size(), report.to_dict()["counts"])
    _save_atomically(write_files, out_dir, overwrite)
    return report


def _check_out_dir(out_dir: str, overwrite: bool) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataError(f"tokenizer output {out_dir} exists and is not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise DataError(
            f"tokenizer output directory {out_dir} is not empty; pass overwrite=True (--overwrite)"
        )


def _training_texts(
    sources: list[SourceFile],
    report: BuildReport,
    config: CleanConfig,
    max_chars: int,
    seed: int,
    text_field: str,
    one_per_line: bool,
) -> Iterator[str]:
    estimated = sum(
        s.size * _EXPANSION["parquet" if s.format == "parquet" else s.compression] for s in sources
    )
    keep_fraction = min(1.0, max_chars / max(estimated, 1.0))
    if keep_fraction < 1.0:
        logger.info(
            "input ~%d chars > max_training_chars %d: sampling %.1f%% of documents",
            estimated,
            max_chars,
            100 * keep_fraction,
        )
    rng = random.Random(seed)
    cleaner = Cleaner(config, report)
    total = 0
    progress = tqdm(
        total=int(min(estimated, max_chars)),
        unit="char",
        unit_scale=True,
        desc="tokenizer training text",
        disable=not sys.stderr.isatty(),
        leave=False,
    )
    with progress:
        for number, source in enumerate(sources, 1):
            logger.info("tokenizer training text: file %d/%d %s", number, len(sources), source.path)
            for doc in iter_documents(source, report, text_field=text_field, one_per_line=one_per_line):
                if keep_fraction < 1.0 and rng.random() >= keep_fraction:
                    continue
                for text in cleaner.clean(doc):
                    report.add("training_documents")
                    report.add("training_chars", len(text))
                    progress.update(len(text))
                    total += len(text)
                    yield text
                if total >= max_chars:
                    logger.info("reached max_training_chars=%d in %s", max_chars, source.path)
                    return


def _train_wordpiece(texts: Iterator[str], vocab_size: int, lowercase: bool) -> Tokenizer:
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    # limit_alphabet as in BERT's tooling: rare characters of a huge alphabet must not crowd out words.
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), limit_alphabet=1000, show_progress=False
    )
    backend.train_from_iterator(texts, trainer)
    _finish_pipeline(backend)
    return backend


def _spm_normalizer(lowercase: bool) -> normalizers.Normalizer:
    # Whitespace runs (newlines included) become one space: pieces never span words, as in SentencePiece.
    # Only trailing whitespace is stripped: the normaliser runs on each piece of text between added tokens,
    # and the space that starts " y" in "x [MASK] y" is the word start of y (a leading space of the whole
    # text becomes the ▁ Metaspace would prepend anyway, so documents encode as with a full strip).
    steps = [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(left=False)]
    return normalizers.Sequence(steps + ([normalizers.Lowercase()] if lowercase else []))


def _train_sentencepiece(
    texts: Iterator[str], model_type: str, vocab_size: int, lowercase: bool, options: dict
) -> tuple[Tokenizer, bytes]:
    """Train with the sentencepiece library (`options`: byte_fallback, character_coverage); return the
    equivalent `tokenizers` pipeline and the model."""
    import sentencepiece as spm

    normalizer = _spm_normalizer(lowercase)

    def sentences() -> Iterator[str]:
        # SentencePiece trains on lines; it sees the text exactly as the HF normaliser will present it.
        for text in texts:
            for line in text.split("\n"):
                for piece in (
                    split_text(line, _SPM_MAX_SENTENCE_CHARS)
                    if len(line) > _SPM_MAX_SENTENCE_CHARS
                    else [line]
                ):
                    normalized = normalizer.normalize_str(piece)
                    if normalized:
                        yield normalized

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_writer=model,
            model_type=model_type,
            vocab_size=vocab_size,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_by_whitespace=True,
            max_sentence_length=4 * _SPM_MAX_SENTENCE_CHARS + 16,
            pad_id=0,
            unk_id=1,
            bos_id=-1,
            eos_id=-1,
            pad_piece="[PAD]",
            unk_piece="[UNK]",
            control_symbols=list(SPECIAL_TOKENS[2:]),
            minloglevel=2,
            **options,
        )
    except RuntimeError as exc:
        raise DataError(
            f"SentencePiece training failed: {exc} (adjust --vocab-size to the amount of text)"
        ) from exc
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    assert [p for p, _ in pieces[: len(SPECIAL_TOKENS)]] == list(SPECIAL_TOKENS)
    # Byte pieces (<0xE4>) stand for bytes of unknown characters, never for their own text.
    unmatched = {i for i in range(len(pieces)) if i < len(SPECIAL_TOKENS) or processor.is_byte(i)}
    byte_fallback = bool(options.get("byte_fallback"))
    if model_type == "unigram":
        # Specials and bytes get a score no real segmentation loses to, so text never turns into them.
        vocab = [(piece, -1e9 if i in unmatched else score) for i, (piece, score) in enumerate(pieces)]
        backend = Tokenizer(models.Unigram(vocab, unk_id=1, byte_fallback=byte_fallback))
    else:
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        merges = _bpe_merges(vocab, unmatched)
        backend = Tokenizer(
            models.BPE(vocab, merges, unk_token="[UNK]", fuse_unk=True, byte_fallback=byte_fallback)
        )
    backend.normalizer = normalizer
    # prepend_scheme="first": a ▁ is prepended to the text, not to every piece after an added token
    # ("always" turned "中文[MASK]测试" into ... [MASK] ▁测试, a word start the text does not have).
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    metaspace = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), metaspace]) if byte_fallback else metaspace
    _finish_pipeline(backend, mask_lstrip=True)
    return backend, model.getvalue()


def _bpe_merges(vocab: dict[str, int], unmatched: set[int]) -> list[tuple[str, str]]:
    """Merges for a SentencePiece BPE vocabulary: every split of a piece into two known pieces, in id order
    of the merged piece (SentencePiece numbers BPE pieces in merge order); `unmatched` ids (specials,
    byte pieces) take no part."""
    usable = {piece for piece, piece_id in vocab.items() if piece_id not in unmatched}
    merges = []
    for piece, piece_id in vocab.items():
        if piece not in usable:
            continue
        splits = [(piece[:i], piece[i:]) for i in range(1, len(piece)) if {piece[:i], piece[i:]} <= usable]
        merges.extend((piece_id, vocab[left], vocab[right], left, right) for left, right in splits)
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def _finish_pipeline(backend: Tokenizer, mask_lstrip: bool = False) -> None:
    """Register the specials as added tokens (`mask_lstrip`: [MASK] takes the whitespace before it, as
    RoBERTa's <mask> does, so the next piece's ▁ is the only word-start mark around it) and the
    [CLS] A [SEP] B [SEP] template."""
    ids = {token: backend.token_to_id(token) for token in SPECIAL_TOKENS}
    assert list(ids.values()) == list(range(len(SPECIAL_TOKENS))), ids
    specials = [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS[:-1]]
    specials.append(AddedToken("[MASK]", special=True, normalized=False, lstrip=mask_lstrip))
    backend.add_special_tokens(specials)
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )


def _write_generic_dir(backend: Tokenizer, tmp_dir: str, *, extra_files: dict[str, bytes]) -> None:
    """Save `backend` as a generic (PreTrainedTokenizerFast) dir with [PAD] [UNK] [CLS] [SEP] [MASK], plus
    `extra_files` (name -> bytes)."""
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    ).save_pretrained(tmp_dir)
    config_path = os.path.join(tmp_dir, "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as fh:
        config = json.load(fh)
    # The class name every transformers release (4.x alias included) maps to "load tokenizer.json as is".
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(config_path, "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)
    # transformers 5 keeps the specials in tokenizer_config.json only; older tools look here.
    specials = {f"{role}_token": config[f"{role}_token"] for role in ("unk", "pad", "cls", "sep", "mask")}
    with open(os.path.join(tmp_dir, "special_tokens_map.json"), "w", encoding="utf-8") as fh:
        json.dump(specials, fh, indent=2, sort_keys=True)
    for name, data in extra_files.items():
        with open(os.path.join(tmp_dir, name), "wb") as fh:
            fh.write(data)


def _save_atomically(write_files: Callable[[str], None], out_dir: str, overwrite: bool) -> None:
    """Call `write_files(tmp_dir)` on a temporary sibling of `out_dir`, then rename it into place."""
    out_dir = os.path.normpath(out_dir)
    tmp_dir = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
        write_files(tmp_dir)
        _check_out_dir(out_dir, overwrite)  # again: another process may have written there meanwhile
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    old_dir = f"{out_dir}.old-{os.getpid()}"
    if os.path.isdir(out_dir):
        os.rename(out_dir, old_dir)
    commit_temp_dir(tmp_dir, out_dir)
    shutil.rmtree(old_dir, ignore_errors=True)
