"""Benchmark: the fixed start-up cost of loading a tokenizer dir in a fresh process.

For each dir, in fresh interpreters (best of --repeats): seconds from the first import to a loaded
tokenizer (wall), and the CPU seconds of the whole process (user + system, less noisy on a shared
machine), for `data_pipeline.tokenizer.load.load_tokenizer` and for `transformers.AutoTokenizer`, plus
whether the load imported transformers; and the CPU seconds of a bare interpreter. With --corpus, it
first makes tokenizer dirs from the corpus as real checkpoints ship them (see make_dirs): ours (30k
WordPiece, generic class), BERT-style (the same vocabulary saved by BertTokenizer, uncased, with saved
truncation and padding), RoBERTa-style (30k byte-level BPE), XLM-R and ALBERT style (8k SentencePiece).

    mlm-data sample-corpus /tmp/bench/corpus
    python bench/tokenizer_startup.py --corpus /tmp/bench/corpus --work /tmp/bench/startup
    python bench/tokenizer_startup.py --tokenizer DIR [DIR ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

# bench/data_pipeline.py is named like the package: keep bench/ off the import path.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

OURS = (
    "import sys, time; t = time.perf_counter(); from data_pipeline.tokenizer.load import load_tokenizer; "
    "load_tokenizer(sys.argv[1]); print(time.perf_counter() - t, 'transformers' in sys.modules)"
)
AUTO = (
    "import sys, time; t = time.perf_counter(); from transformers import AutoTokenizer; "
    "AutoTokenizer.from_pretrained(sys.argv[1]); print(time.perf_counter() - t, True)"
)


def make_dirs(corpus: str, work: str) -> list[str]:
    """Tokenizer dirs made from `corpus` (kept in `work` for the next run), each as real checkpoints ship
    them: ours (30k WordPiece, `mlm-data tokenizer`), the same vocabulary saved by BertTokenizer (uncased,
    saved truncation and padding), a 30k byte-level BPE saved by RobertaTokenizer, and 8k SentencePiece
    unigram models converted by XLMRobertaTokenizer and AlbertTokenizer."""
    import io

    import sentencepiece as spm
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AlbertTokenizer, RobertaTokenizer, XLMRobertaTokenizer

    from data_pipeline.tokenizer.load import train_tokenizer

    paths = {
        name: os.path.join(work, name)
        for name in (
            "ours-wordpiece-30k",
            "bert-style-30k",
            "roberta-style-30k",
            "xlmr-style-8k",
            "albert-style-8k",
        )
    }
    files = sorted(os.path.join(corpus, f) for f in os.listdir(corpus))

    def lines():
        for file in files:
            with open(file, encoding="utf-8") as fh:
                yield from (line for line in fh if line.strip())

    if not os.path.isdir(paths["ours-wordpiece-30k"]):
        train_tokenizer([corpus], "wordpiece", 30_000, paths["ours-wordpiece-30k"], lowercase=True)
    if not os.path.isdir(paths["bert-style-30k"]):
        bert_style_dir(paths["ours-wordpiece-30k"], paths["bert-style-30k"])
    if not os.path.isdir(paths["roberta-style-30k"]):
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=30_000,
            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        backend.train_from_iterator(lines(), trainer)
        model = json.loads(backend.to_str())["model"]
        merges = [tuple(m) for m in model["merges"]]
        RobertaTokenizer(vocab=model["vocab"], merges=merges).save_pretrained(paths["roberta-style-30k"])
    for name, cls, file, options in (
        ("xlmr-style-8k", XLMRobertaTokenizer, "sentencepiece.bpe.model", {}),
        (
            "albert-style-8k",
            AlbertTokenizer,
            "spiece.model",
            dict(pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, control_symbols=["[CLS]", "[SEP]", "[MASK]"]),
        ),
    ):
        if os.path.isdir(paths[name]):
            continue
        source = os.path.join(work, f"{name}-spm")
        os.makedirs(source, exist_ok=True)
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines(),
            model_writer=model,
            vocab_size=8000,
            minloglevel=2,
            input_sentence_size=200_000,
            shuffle_input_sentence=True,
            **options,
        )
        with open(os.path.join(source, file), "wb") as fh:
            fh.write(model.getvalue())
        cls.from_pretrained(source).save_pretrained(paths[name])
    return list(paths.values())


def bert_style_dir(wordpiece_dir: str, out_dir: str) -> str:
    """`wordpiece_dir`'s vocabulary saved by transformers' BertTokenizer as a BERT checkpoint ships it
    (tokenizer_class BertTokenizer, vocab.txt + tokenizer.json with saved truncation and padding),
    lowercasing when the source tokenizer does; returns `out_dir`."""
    from tokenizers import Tokenizer
    from transformers import BertTokenizer

    source = Tokenizer.from_file(os.path.join(wordpiece_dir, "tokenizer.json"))
    lowercase = _lowercases(json.loads(source.to_str())["normalizer"])
    tokenizer = BertTokenizer(vocab=source.get_vocab(), do_lower_case=lowercase, model_max_length=512)
    tokenizer.backend_tokenizer.enable_truncation(max_length=512)
    tokenizer.backend_tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _lowercases(normalizer: dict | None) -> bool:
    if not normalizer:
        return False
    if normalizer.get("type") in ("Lowercase", "BertNormalizer"):
        return normalizer.get("type") == "Lowercase" or bool(normalizer.get("lowercase"))
    return any(_lowercases(n) for n in normalizer.get("normalizers") or [])


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_load(code: str, path: str, repeats: int) -> tuple[float, float, bool]:
    """(best wall seconds in the process, best CPU seconds of the process, transformers imported) over
    `repeats` fresh interpreters."""
    best, best_cpu, imported = float("inf"), float("inf"), False
    for _ in range(repeats):
        before = _child_cpu()
        out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True)
        best_cpu = min(best_cpu, _child_cpu() - before)
        seconds, flag = out.stdout.split()
        best, imported = min(best, float(seconds)), flag == "True"
    return best, best_cpu, imported


def main() -> None:
    """Parse arguments, time each dir, print one JSON line per dir."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", nargs="*", default=[], help="tokenizer dirs to time")
    parser.add_argument("--corpus", help="make an ours and a BERT-style 30k dir from this corpus first")
    parser.add_argument("--work", default="/tmp/bench/startup", help="where --corpus dirs are made")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dirs = list(args.tokenizer)
    if args.corpus:
        os.makedirs(args.work, exist_ok=True)
        dirs += make_dirs(args.corpus, args.work)
    _, bare_cpu, _ = time_load("import sys; print(0, False)", "", args.repeats)
    print(json.dumps({"bare_interpreter_cpu_s": round(bare_cpu, 3)}))
    for path in dirs:
        ours, ours_cpu, imported = time_load(OURS, path, args.repeats)
        auto, auto_cpu, _ = time_load(AUTO, path, args.repeats)
        with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as fh:
            cls = json.load(fh).get("tokenizer_class")
        print(
            json.dumps(
                {
                    "dir": os.path.basename(os.path.normpath(path)),
                    "tokenizer_class": cls,
                    "load_tokenizer_s": round(ours, 3),
                    "load_tokenizer_cpu_s": round(ours_cpu, 3),
                    "imports_transformers": imported,
                    "autotokenizer_s": round(auto, 3),
                    "autotokenizer_cpu_s": round(auto_cpu, 3),
                }
            )
        )


if __name__ == "__main__":
    main()
