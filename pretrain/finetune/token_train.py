"""Token-classification runs for `mlm-finetune --task token-classification`: one run is the HF `Trainer`
with `AutoModelForTokenClassification` on one seed (the model, the Trainer's arguments and the tokenizer
are the sequence task's, `train.py`); the validation sentences are then tagged word by word, windows
joined back, and scored per entity (`entity_metrics`).
"""

from __future__ import annotations

import functools
import logging
import os

from pretrain.finetune.entity_metrics import entity_scores, summarise_entities
from pretrain.finetune.runs import FinetuneSettings, run_in_turn, run_record, save_run, train_run
from pretrain.finetune.token_data import TokenTaskData
from pretrain.finetune.token_windows import EncodedWords, encode_words, with_prefix_space, words_tags
from pretrain.finetune.train import load_tokenizer, prepared_model, resolve_max_seq_len

log = logging.getLogger("mlm-finetune")

_AUTO_CLASS = "AutoModelForTokenClassification"


def encode_task(tokenizer, data: TokenTaskData, max_seq_len: int) -> dict[str, EncodedWords]:
    """Both splits as windows of at most max_seq_len sub-tokens, tags as ids."""
    index = {name: i for i, name in enumerate(data.label_names)}
    out = {}
    for name in ("train", "validation"):
        split = getattr(data, name)
        ids = [[index[t] for t in tags] for tags in split.tags]
        out[name] = encode_words(tokenizer, split.sentences, ids, max_seq_len)
    return out


def predict_windows(model, collator, encoded: EncodedWords, batch_size: int) -> list[list[int]]:
    """Per window, the arg-max tag id at every position, in window order (our loop, not `Trainer.predict`:
    the order of the windows is what joins them back into sentences)."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    predictions = []
    with torch.no_grad():
        for begin in range(0, len(encoded), batch_size):
            batch = collator([encoded[i] for i in range(begin, min(begin + batch_size, len(encoded)))])
            batch.pop("labels")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            predictions.extend(logits.argmax(-1).cpu().tolist())
    return predictions


def finetune_tokens_once(
    model_dir: str,
    tokenizer,
    data: TokenTaskData,
    encoded: dict[str, EncodedWords],
    settings: FinetuneSettings,
    which: str,
    seed: int,
    announce: bool = False,
    title: str | None = None,
) -> dict:
    """Fine-tune one token classifier (`which`: pretrained or random_init) with `seed`; returns its
    entity_scores on the validation split plus seed, train_loss and train_seconds."""
    from transformers import DataCollatorForTokenClassification

    model, parameters = prepared_model(model_dir, data, which, seed, announce, settings, _AUTO_CLASS)
    collator = DataCollatorForTokenClassification(tokenizer)
    trainer, training = train_run(model, settings, seed, encoded["train"], collator, title)
    save_run(model, tokenizer, settings, which, seed)
    predicted = predict_windows(trainer.model, collator, encoded["validation"], 2 * settings.batch_size)
    sentences = data.validation.sentences
    tag_ids = words_tags(encoded["validation"], predicted, [len(s) for s in sentences])
    predicted_tags = [[data.label_names[i] for i in ids] for ids in tag_ids]
    scores = entity_scores(data.validation.tags, predicted_tags, data.scheme)
    return run_record(seed, scores, training, parameters)


def token_tokenizer(model_dir: str):
    """The model dir's tokenizer ready for pre-split words (byte-level BPE given a prefix space). Raises
    FinetuneInputError as `train.load_tokenizer` does, and for a tokenizer that is not a fast one (no
    `word_ids()`, so no word alignment)."""
    from pretrain.finetune.data import FinetuneInputError

    tokenizer = load_tokenizer(model_dir, model_dir)
    if not getattr(tokenizer, "is_fast", False):
        raise FinetuneInputError(
            f"{model_dir}: its tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer; token "
            "classification aligns tags with word_ids(): save a tokenizer.json with the model"
        )
    return with_prefix_space(tokenizer)


def run_token_finetuning(
    model_dir: str,
    data: TokenTaskData,
    settings: FinetuneSettings,
    seeds: list[int],
    models: tuple[str, ...] = ("pretrained",),
) -> tuple[dict, dict]:
    """Fine-tune each of `models` once per seed. Returns ({model: summarise_entities(...)}, the encoding
    counts per split: windows, split sentences, cut words, words without tokens)."""
    tokenizer = token_tokenizer(model_dir)
    settings = resolve_max_seq_len(settings, model_dir, tokenizer)
    encoded = encode_task(tokenizer, data, settings.max_seq_len)
    counts = {split: e.counts for split, e in encoded.items()}
    if counts["validation"]["split_sentences"] or counts["train"]["split_sentences"]:
        log.info(
            "sentences longer than --max-seq-len %d were split into windows (not truncated): %d train, "
            "%d validation",
            settings.max_seq_len,
            counts["train"]["split_sentences"],
            counts["validation"]["split_sentences"],
        )
    runs = [(which, seed) for which in models for seed in seeds]
    run_once = functools.partial(finetune_tokens_once, model_dir, tokenizer, data, encoded, settings)
    results = run_in_turn(runs, run_once, _log_token_run)
    summaries = {which: summarise_entities([results[which, seed] for seed in seeds]) for which in models}
    return summaries, counts


def _log_token_run(which: str, run: dict) -> None:
    log.info(
        "%s seed %d: entity F1 %.4f (P %.4f, R %.4f)",
        which,
        run["seed"],
        run["f1"],
        run["precision"],
        run["recall"],
    )


def token_task_report(args, data: TokenTaskData, counts: dict) -> dict:
    """The report's `task` entry for a token task: files, columns, scheme, tags, sizes, what the encoding
    and the tag checks counted, and the all-O baseline."""
    return {
        "type": "token-classification",
        "train": os.path.abspath(args.train),
        "validation": data.validation_source,
        "columns": {"tokens": args.tokens_column, "tags": args.tags_column},
        "scheme": data.scheme,
        "labels": data.label_names,
        "train_sentences": len(data.train),
        "validation_sentences": len(data.validation),
        "empty_sentences_skipped": data.train.empty_skipped + data.validation.empty_skipped,
        "orphan_inside_tags": data.orphan_inside_tags,
        "encoding": counts,
        "all_o_word_accuracy": data.all_o_word_accuracy(),
    }
