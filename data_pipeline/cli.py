"""`mlm-data {sample-corpus,sample-task,tokenizer,build,verify,inspect,merge}`.

Bad input -> one stderr line, exit 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from data_pipeline.build.settings import DEFAULTS as BUILD_DEFAULTS
from data_pipeline.build.settings import BuildConfig
from data_pipeline.errors import DataError, os_error_line
from data_pipeline.ingest.clean import CleanConfig
from data_pipeline.shards.manifest_schema import MODES

log = logging.getLogger("mlm-data")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlm-data", description="Offline data pipeline for MLM pretraining."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample-corpus", help="write a real-text corpus from the Python standard library")
    p.add_argument("out_dir")
    p.add_argument("--max-bytes", type=int, default=None, help="size cap (default about 12 MB)")
    p.add_argument("--workers", type=int, default=1, help="processes parsing the sources (same output)")

    p = sub.add_parser(
        "sample-task",
        help="write a labelled task from stdlib docstrings: which package a docstring is from, or "
        "(--task token-classification) the Python names it mentions",
    )
    p.add_argument("out_dir")
    p.add_argument(
        "--task",
        choices=["sequence-classification", "token-classification"],
        default="sequence-classification",
    )

    p = sub.add_parser(
        "tokenizer", help="train a WordPiece, SentencePiece or byte-level BPE (RoBERTa) tokenizer"
    )
    p.add_argument("--input", nargs="+", required=True, help="files, directories or globs")
    p.add_argument(
        "--kind",
        choices=["wordpiece", "sentencepiece-unigram", "sentencepiece-bpe", "bpe"],
        required=True,
        help="bpe: RoBERTa's byte-level BPE (a RobertaTokenizer dir with <s> <pad> </s> <unk> <mask>)",
    )
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--lowercase", action="store_true")
    p.add_argument(
        "--byte-fallback",
        action="store_true",
        help="SentencePiece: characters outside the vocabulary become their UTF-8 bytes, not [UNK]",
    )
    p.add_argument(
        "--character-coverage",
        type=float,
        default=0.9995,
        help="SentencePiece: share of the training characters the alphabet covers, 0.98-1 (0.9995 suits CJK)",
    )
    p.add_argument("--overwrite", action="store_true")
    _add_source_flags(p)

    p = sub.add_parser("build", help="tokenize and pack a corpus into Arrow shards + manifest.json")
    build = BUILD_DEFAULTS
    p.add_argument("--input", nargs="+", required=True, help="files, directories or globs")
    p.add_argument("--tokenizer", required=True, help="our tokenizer dir or any Hugging Face tokenizer dir")
    p.add_argument("--out", required=True)
    p.add_argument("--seq-len", type=int, default=build.seq_len)
    p.add_argument("--mode", choices=MODES, default=build.mode)
    p.add_argument("--workers", type=int, default=build.workers)
    p.add_argument("--validation-fraction", type=float, default=build.validation_fraction)
    p.add_argument("--seed", type=int, default=build.seed, help="split hash and NSP/SOP choices")
    p.add_argument("--rows-per-shard", type=int, default=build.rows_per_shard)
    p.add_argument(
        "--normalization", default=str(build.clean.normalization), help="NFC, NFKC, NFD, NFKD or none"
    )
    p.add_argument(
        "--max-doc-chars", type=int, default=build.clean.max_doc_chars, help="longer documents are split"
    )
    p.add_argument("--num-partitions", type=int, default=build.num_partitions)
    p.add_argument("--partition-index", type=int, default=build.partition_index)
    p.add_argument("--overwrite", action="store_true", help="replace a different build in --out")
    p.add_argument(
        "--max-skipped-fraction",
        type=float,
        default=build.max_skipped_fraction,
        help="fail when files with extensions we do not read exceed this share of the input bytes "
        f"({build.max_skipped_fraction})",
    )
    p.add_argument("--accept-skipped", action="store_true", help="build even if many input files are skipped")
    _add_source_flags(p)

    p = sub.add_parser("verify", help="check every shard against the manifest; exit 1 naming bad shards")
    p.add_argument("dir")

    p = sub.add_parser("inspect", help="counts and decoded samples of a shards dir")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--samples", type=int, default=2)

    p = sub.add_parser("merge", help="join partition builds into one manifest (shards hard-linked)")
    p.add_argument("parts", nargs="+")
    p.add_argument("--out", required=True)
    return parser


def _add_source_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--text-field", default=BUILD_DEFAULTS.text_field, help="JSONL field or Parquet column of the text"
    )
    p.add_argument("--one-per-line", action="store_true", help=".txt: one document per line")
    p.add_argument(
        "--ext",
        action="append",
        default=[],
        metavar="EXT[=FORMAT]",
        help="also read files ending in EXT (as txt, or FORMAT jsonl/parquet); '' = no extension; repeatable",
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 bad input / bad shards)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except DataError as exc:
        print(f"mlm-data {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a read-only --out, a file size limit: one line, not a traceback
        out = getattr(args, "out", None) or getattr(args, "out_dir", None)
        print(f"mlm-data {args.command}: error: {os_error_line(exc, out)}", file=sys.stderr)
        return 1


def _sample_corpus(args) -> int:
    from data_pipeline.samples.corpus import write_sample_corpus

    result = write_sample_corpus(args.out_dir, max_bytes=args.max_bytes, workers=args.workers)
    print(f"wrote {len(result['files'])} files, {result['documents']} documents, {result['bytes']} bytes")
    return 0


def _sample_token_task(args) -> int:
    from data_pipeline.samples.token_task import write_token_task

    stats = write_token_task(args.out_dir)
    train, val = stats["train"], stats["validation"]
    entities = ", ".join(f"{kind} {n}" for kind, n in val["entities"].items())
    print(
        f"wrote {args.out_dir}/train.jsonl ({train['sentences']} sentences) and validation.jsonl "
        f"({val['sentences']}; entities {entities}); tagging every word O scores "
        f"{val['all_o_word_accuracy']:.3f} word accuracy and entity F1 0 on validation"
    )
    return 0


def _sample_task(args) -> int:
    from data_pipeline.samples.task import write_sample_task

    if args.task == "token-classification":
        return _sample_token_task(args)

    stats = write_sample_task(args.out_dir)
    train, val = stats["train"], stats["validation"]
    print(
        f"wrote {args.out_dir}/train.jsonl ({train['examples']} examples) and validation.jsonl "
        f"({val['examples']}); {len(train['classes'])} classes; majority class "
        f"'{val['majority_class']}' scores {val['majority_accuracy']:.3f} on validation"
    )
    return 0


def _tokenizer(args) -> int:
    from data_pipeline.ingest.input_files import parse_extensions
    from data_pipeline.tokenizer.training import train_tokenizer

    report = train_tokenizer(
        args.input,
        args.kind,
        args.vocab_size,
        args.out,
        lowercase=args.lowercase,
        overwrite=args.overwrite,
        text_field=args.text_field,
        one_per_line=args.one_per_line,
        extensions=parse_extensions(args.ext),
        byte_fallback=args.byte_fallback,
        character_coverage=args.character_coverage,
    )
    print(f"tokenizer saved to {args.out}; {json.dumps(report.to_dict()['counts'])}")
    return 0


def _build(args) -> int:
    from data_pipeline.build.pipeline import run_build
    from data_pipeline.ingest.input_files import parse_extensions
    from data_pipeline.tokenizer.segment import is_segmentation_count

    if args.workers < 1:
        raise DataError(f"--workers must be >= 1, got {args.workers}")
    if args.rows_per_shard < 1:
        raise DataError(f"--rows-per-shard must be >= 1, got {args.rows_per_shard}")
    normalization = None if args.normalization.lower() == "none" else args.normalization.upper()
    try:
        clean = CleanConfig(normalization=normalization, max_doc_chars=args.max_doc_chars)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    cfg = BuildConfig(
        inputs=args.input,
        tokenizer=args.tokenizer,
        out=args.out,
        seq_len=args.seq_len,
        mode=args.mode,
        workers=args.workers,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        rows_per_shard=args.rows_per_shard,
        text_field=args.text_field,
        one_per_line=args.one_per_line,
        clean=clean,
        num_partitions=args.num_partitions,
        partition_index=args.partition_index,
        overwrite=args.overwrite,
        extensions=parse_extensions(args.ext),
        max_skipped_fraction=args.max_skipped_fraction,
        accept_skipped=args.accept_skipped,
    )
    s = run_build(cfg)
    if s.get("up_to_date"):
        print(f"{args.out} already holds this build (manifest.json present); nothing to do")
        return 0
    counts = s["counts"]
    informative = ("documents", "files")
    dropped = {k: v for k, v in counts.items() if k not in informative and not is_segmentation_count(k) and v}
    skipped = s["skipped"]
    kinds = ", ".join(f"{k} x{v['files']}" for k, v in skipped["by_extension"].items())
    segmented = counts.get("segmented_documents", 0)
    unsegmented = sum(v for k, v in counts.items() if is_segmentation_count(k)) - segmented
    words = f" (word-segmented {segmented}, unsegmented {unsegmented})" if segmented or unsegmented else ""
    print(
        f"documents {s['documents']}{words}, tokens {s['tokens']}, sequences {s['sequences']}, "
        f"fill ratio {s['fill_ratio']:.4f}, dropped/repaired {json.dumps(dropped)}, "
        f"skipped {skipped['files']} files ({skipped['bytes']} bytes{': ' + kinds if kinds else ''}), "
        f"{s['seconds']:.1f} s, {s['tokens_per_second']:,.0f} tokens/s"
    )
    return 0


def _verify(args) -> int:
    from data_pipeline.shards.verify import verify_shards

    problems = verify_shards(args.dir)
    for problem in problems:
        print(f"BAD {problem}", file=sys.stderr)
    if problems:
        print(f"mlm-data verify: {len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1
    print(f"{args.dir}: all shards match the manifest")
    return 0


def _inspect(args) -> int:
    from data_pipeline.shards.inspect import DOCUMENT_MARK, PAIR_LABEL_NAMES, decoded_samples, summary

    info = summary(args.dir)
    if args.json:
        print(json.dumps(info, sort_keys=True))
        return 0
    print(
        f"{args.dir}: mode {info['mode']}, seq_len {info['seq_len']}, vocab {info['vocab_size']}, "
        f"format {info['format_version']}"
    )
    print(f"sequences {info['sequences']}, tokens {info['tokens']}, fill ratio {info['fill_ratio']:.4f}")
    for name, split in info["splits"].items():
        pairs = ""
        if "pair_label_1" in split:
            share = split["pair_label_1"] / max(1, split["sequences"])
            pairs = f", {PAIR_LABEL_NAMES[info['mode']]} {share:.3f} ({split['pair_label_1']} rows)"
        rows = f"{split['sequences']} sequences, {split['tokens']} tokens, {split['shards']} shards"
        print(f"  {name}: {rows}{pairs}")
    print(f"samples ('|' marks a word start, '{DOCUMENT_MARK}' a document start):")
    for line in decoded_samples(args.dir, args.samples):
        print("  " + line)
    return 0


def _merge(args) -> int:
    from data_pipeline.build.merge import merge_parts

    m = merge_parts(args.parts, args.out)
    print(f"merged {len(args.parts)} parts into {args.out}: {m.rows} sequences, {m.tokens} tokens")
    return 0


_COMMANDS = {
    "sample-corpus": _sample_corpus,
    "sample-task": _sample_task,
    "tokenizer": _tokenizer,
    "build": _build,
    "verify": _verify,
    "inspect": _inspect,
    "merge": _merge,
}
