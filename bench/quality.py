"""Benchmark: does `mlm-train` learn as well as the Hugging Face run_mlm.py recipe, at equal tokens, faster?

Both trainers get the same BERT shape, tokenizer, shards, batch (32 x 128), number of steps and LR schedule
(AdamW, linear warmup then linear decay to 0, weight decay 0.01 off biases and LayerNorm, eps 1e-6, clip
1.0, dropout 0.1, 15% token-level masking with 80/10/10), one process each, fp32, `--threads` CPU threads
each (default 1), one run per seed:

- ours: `python -m pretrain --config ...` (a process), exported with `export_checkpoint`;
- reference: `Trainer` + `BertForMaskedLM` + `DataCollatorForLanguageModeling` over the shards' rows
  (a process of this script, `--hf-worker`).

One evaluator then scores both exports, and a random-init model of the same shape per seed, on the same
held-out masked text: the shards' validation rows, masked once (same positions, same 80/10/10
replacement, numpy seed 1234), masked-token loss and accuracy. All three are then fine-tuned on the
default suite (`mlm-finetune suite default`: the offline tasks), `--finetune-seeds` runs per model (the
downstream row is over every pretraining x fine-tuning seed). Prints the three side by side with the wall
time of each trainer and writes WORK/quality-TAG.json (the suite's own table: WORK/suite/TAG/suite.md).
Goal: ours mean >= reference mean - reference std (masked-token accuracy, downstream average), in less
time; random init shows what pretraining bought at all.

`--compare archs` trains our BERT and our ModernBERT of the same size class (`--model`: both trainers'
presets of that name) instead, on the same shards, tokens, batch, masking and LR schedule, each with its
own published regularisation (BERT dropout 0.1, ModernBERT none), and scores both with the same evaluator
on single documents (the evaluator's masked validation rows cut at their `doc_start`s and padded:
ModernBERT trains with documents isolated, BERT on whole packed rows, so neither sees a row as it
trained). Which wins at a tiny budget is a finding, not a goal.

    python bench/quality.py              # tiny, 3 seeds, 200 steps (~20 min, 2 cores)
    python bench/quality.py --model mini --steps 1000 --seeds 5 --work .bench-quality-mini
    python bench/quality.py --shards S --steps 2 --seeds 1 --finetune-epochs 0.05   # smoke (the test)
    python bench/quality.py --compare archs --seeds 1 --steps 200 --work .bench-quality
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# Run as a script, bench/ is sys.path[0] and bench/data_pipeline.py would shadow the package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from pretrain.models.bert.config import PRESETS  # noqa: E402
from pretrain.models.modernbert.config import PRESETS as MODERNBERT_PRESETS  # noqa: E402

# The BERT sizes both sides train (the trainer's own presets; --model picks one).
MODELS = ("tiny", "mini")
BATCH, SEQ_LEN = 32, 128
OPTIM = {"weight_decay": 0.01, "eps": 1e-6, "grad_clip": 1.0}
EVAL_MASK_SEED = 1234
BIN = os.path.dirname(sys.executable)


def _run(cmd: list[str], **kwargs) -> None:
    from pretrain.runtime.distributed import LAUNCHER_VARIABLES

    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    subprocess.run(cmd, check=True, env={**env, "TOKENIZERS_PARALLELISM": "false"}, **kwargs)


def _set_threads(threads: int) -> None:
    """The same CPU threads for every process and for this one (OMP_NUM_THREADS is inherited)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def build_inputs(work: str, vocab_size: int) -> str:
    """The shards dir under `work`, built once with the real CLIs (markers skip finished steps)."""
    data = os.path.join(BIN, "mlm-data")
    corpus, tok, shards = (os.path.join(work, n) for n in ("corpus", "tokenizer", "shards"))
    steps = [
        (corpus, [data, "sample-corpus", corpus]),
        (
            tok,
            [
                data,
                "tokenizer",
                "--input",
                corpus,
                "--kind",
                "wordpiece",
                "--vocab-size",
                str(vocab_size),
                "--out",
                tok,
                "--overwrite",
            ],
        ),
        (
            shards,
            [
                data,
                "build",
                "--input",
                corpus,
                "--tokenizer",
                tok,
                "--out",
                shards,
                "--seq-len",
                str(SEQ_LEN),
                "--mode",
                "full-sentences",
                "--workers",
                "2",
                "--validation-fraction",
                "0.02",
                "--overwrite",
            ],
        ),
    ]
    for out, cmd in steps:
        if not os.path.exists(out + ".done"):
            subprocess.run(["rm", "-rf", out], check=True)
            _run(cmd)
            open(out + ".done", "w").close()
    return shards


def model_section(arch: str, size: str) -> dict:
    """Our `model` section for `arch` (bert or modernbert) at preset `size`, rows of SEQ_LEN."""
    if arch == "modernbert":
        return {"arch": "modernbert", "preset": size, "max_position_embeddings": SEQ_LEN, "compile": False}
    return {
        **PRESETS[size],
        "max_position_embeddings": SEQ_LEN,
        "pair_head": "none",
        "dropout": 0.1,
        "attention_dropout": 0.1,
    }


def train_ours(shards: str, out: str, model: dict, seed: int, steps: int, lr: float, warmup: int) -> dict:
    """Pretrain with `python -m pretrain` (one process, ZeRO 0, fp32) with the `model` section
    (`model_section`); export to out/export; wall times."""
    import yaml

    from pretrain.checkpoint.export import export_checkpoint

    run_dir = os.path.join(out, "run")
    cfg = {
        "run_dir": run_dir,
        "precision": "fp32",
        "data": {"path": shards},
        "model": model,
        "masking": {"probability": 0.15, "whole_word": False},
        "train": {
            "max_steps": steps,
            "micro_batch_size": BATCH,
            "grad_accum_steps": 1,
            "seed": seed,
            "resume": "none",
            "log_every_steps": 50,
        },
        "optim": {
            "lr": lr,
            "warmup_steps": warmup,
            "schedule": "linear",
            "min_lr_ratio": 0.0,
            "weight_decay": OPTIM["weight_decay"],
            "eps": OPTIM["eps"],
            "grad_clip": OPTIM["grad_clip"],
        },
        "zero": {"stage": 0},
        "checkpoint": {"every_steps": None, "keep_last": 1},
        "eval": {"every_steps": None, "max_batches": 1},
        "metrics": {"tensorboard": False},
    }
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    started = time.perf_counter()
    _run([sys.executable, "-m", "pretrain", "--config", path], stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [r for r in map(json.loads, f) if "loss" in r]
    export = os.path.join(out, "export")
    if not os.path.isdir(export):
        export_checkpoint(run_dir, export)
    # The loop's time: from the first step's end back by one step's share, to the last step's end.
    loop = records[-1]["time"] - records[0]["time"]
    loop *= len(records) / max(len(records) - 1, 1)
    return {"model_dir": export, "wall_s": wall, "loop_s": loop}


def train_hf(shards: str, out: str, shape: dict, seed: int, steps: int, lr: float, warmup: int) -> dict:
    """Pretrain with the HF recipe in a process of this script; returns the model dir and wall times."""
    job = {
        "shards": shards,
        "out": out,
        "shape": shape,
        "seed": seed,
        "steps": steps,
        "lr": lr,
        "warmup": warmup,
    }
    started = time.perf_counter()
    _run(
        [sys.executable, os.path.abspath(__file__), "--hf-worker", json.dumps(job)], stdout=subprocess.DEVNULL
    )
    wall = time.perf_counter() - started
    with open(os.path.join(out, "hf_timing.json")) as f:
        loop = json.load(f)["train_runtime"]
    return {"model_dir": os.path.join(out, "model"), "wall_s": wall, "loop_s": loop}


def _hf_worker(job: dict) -> None:
    """The run_mlm.py recipe: BertForMaskedLM from scratch, DataCollatorForLanguageModeling, Trainer."""
    import numpy as np
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    from data_pipeline.shards.format import ShardReader

    reader = ShardReader(job["shards"], split="train")
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(job["shards"], "tokenizer"))

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(reader)

        def __getitem__(self, i):
            row = reader[i]
            return {"input_ids": np.asarray(row["input_ids"][: int(row["length"])], dtype=np.int64).tolist()}

    s = job["shape"]
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=s["hidden_size"],
        num_hidden_layers=s["num_layers"],
        num_attention_heads=s["num_heads"],
        intermediate_size=s["intermediate_size"],
        max_position_embeddings=SEQ_LEN,
        pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    torch.manual_seed(job["seed"])
    model = BertForMaskedLM(config)
    args = TrainingArguments(
        output_dir=os.path.join(job["out"], "trainer"),
        per_device_train_batch_size=BATCH,
        max_steps=job["steps"],
        learning_rate=job["lr"],
        warmup_steps=job["warmup"],
        lr_scheduler_type="linear",
        weight_decay=OPTIM["weight_decay"],
        adam_epsilon=OPTIM["eps"],
        max_grad_norm=OPTIM["grad_clip"],
        seed=job["seed"],
        data_seed=job["seed"],
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, pad_to_multiple_of=SEQ_LEN)
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), data_collator=collator)
    result = trainer.train()
    trainer.save_model(os.path.join(job["out"], "model"))
    tokenizer.save_pretrained(os.path.join(job["out"], "model"))
    with open(os.path.join(job["out"], "hf_timing.json"), "w") as f:
        json.dump({"train_runtime": result.metrics["train_runtime"]}, f)


def masked_eval_set(shards: str, max_rows: int, by_document: bool = False) -> dict:
    """The held-out masked text both models are scored on: validation rows, 15% of the non-special
    tokens chosen once (numpy seed EVAL_MASK_SEED), 80% -> [MASK], 10% -> a random non-special token,
    10% unchanged. Returns int64 tensors input_ids, attention_mask, labels (-100 off the masked positions).
    by_document: the same masked rows cut into their documents (at `doc_start`), one padded row each."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from data_pipeline.shards.format import ShardReader

    reader = ShardReader(shards, split="validation")
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(shards, "tokenizer"))
    n = min(len(reader), max_rows)
    rows = reader.take(np.arange(n))
    ids = np.asarray(rows["input_ids"], dtype=np.int64)
    lengths = np.asarray(rows["length"], dtype=np.int64)
    special = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
    in_row = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    rng = np.random.default_rng(EVAL_MASK_SEED)
    selected = in_row & ~np.isin(ids, special) & (rng.random(ids.shape) < 0.15)
    action = rng.random(ids.shape)
    replacements = np.setdiff1d(np.arange(len(tokenizer)), special)
    random_ids = replacements[rng.integers(len(replacements), size=ids.shape)]
    inputs = np.where(selected & (action < 0.8), tokenizer.mask_token_id, ids)
    inputs = np.where(selected & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    labels = np.where(selected, ids, -100)
    if by_document:
        return _one_row_per_document(inputs, labels, np.asarray(rows["doc_start"]), lengths, tokenizer)
    return {
        "input_ids": torch.from_numpy(inputs),
        "attention_mask": torch.from_numpy(in_row.astype(np.int64)),
        "labels": torch.from_numpy(labels),
    }


def _one_row_per_document(inputs, labels, doc_start, lengths, tokenizer) -> dict:
    """Masked packed rows -> one right-padded row per document (its tokens from one doc_start to the
    next or the row's end), as masked_eval_set returns them."""
    import numpy as np
    import torch

    pieces = []
    for row, length in enumerate(lengths):
        starts = [int(i) for i in np.flatnonzero(doc_start[row, :length])] + [int(length)]
        pieces += [(row, a, b) for a, b in zip(starts[:-1], starts[1:], strict=True) if b > a]
    width = max(b - a for _, a, b in pieces)
    out = {
        "input_ids": np.full((len(pieces), width), tokenizer.pad_token_id, dtype=np.int64),
        "attention_mask": np.zeros((len(pieces), width), dtype=np.int64),
        "labels": np.full((len(pieces), width), -100, dtype=np.int64),
    }
    for i, (row, a, b) in enumerate(pieces):
        out["input_ids"][i, : b - a] = inputs[row, a:b]
        out["attention_mask"][i, : b - a] = 1
        out["labels"][i, : b - a] = labels[row, a:b]
    return {k: torch.from_numpy(v) for k, v in out.items()}


def evaluate(model_dir: str, eval_set: dict, batch: int = 64) -> dict:
    """Masked-token loss (mean cross-entropy) and accuracy of the masked-LM export in `model_dir`
    (AutoModelForMaskedLM: BertForMaskedLM, ModernBertForMaskedLM)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(model_dir, local_files_only=True).eval()
    loss_sum, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(eval_set["labels"]), batch):
            part = {k: v[start : start + batch] for k, v in eval_set.items()}
            logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
            where = part["labels"] != -100
            picked, labels = logits[where].float(), part["labels"][where]
            loss_sum += float(F.cross_entropy(picked, labels, reduction="sum"))
            correct += int((picked.argmax(-1) == labels).sum())
            count += int(where.sum())
    return {"mlm_loss": loss_sum / count, "mlm_accuracy": correct / count, "masked_tokens": count}


def random_init_model(like: str, out: str, seed: int) -> str:
    """A BertForMaskedLM of `like`'s config with random weights (seed `seed`) and its tokenizer, saved to
    `out`: the random-init baseline as a model dir the suite fine-tunes like the others."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    BertForMaskedLM(BertConfig.from_pretrained(like)).save_pretrained(out)
    AutoTokenizer.from_pretrained(like).save_pretrained(out)
    return out


def downstream_suite(models: dict[str, str], out: str, seeds: int, flags: list[str]) -> dict:
    """Fine-tune every model ({label: dir}) on the default suite (`mlm-finetune suite default`, the
    offline tasks) with `seeds` fine-tuning seeds and `flags` (--set FLAG=VALUE); returns {label: the
    suite's average per seed}. The labels are the names of symlinks in OUT/models."""
    from pretrain.finetune.cli import main as finetune_main

    links = os.path.join(out, "models")
    os.makedirs(links, exist_ok=True)
    for label, model_dir in models.items():
        if not os.path.lexists(os.path.join(links, label)):
            os.symlink(model_dir, os.path.join(links, label))
    argv = ["suite", "default", *(os.path.join(links, label) for label in models), "--out", out]
    if finetune_main([*argv, "--seeds", str(seeds), *flags, "--no-progress"]) != 0:
        raise SystemExit("bench/quality.py: the downstream suite failed (its error is above)")
    with open(os.path.join(out, "suite.json"), encoding="utf-8") as f:
        suite = json.load(f)
    return {label: suite["average"][label]["per_seed"] for label in models}


ROWS = [
    ("mlm_accuracy", "held-out masked-token accuracy", "{:.4f}"),
    ("mlm_loss", "held-out masked-token loss", "{:.4f}"),
    ("downstream", "default suite average (downstream)", "{:.4f}"),
    ("loop_s", "training loop time (s)", "{:.1f}"),
    ("wall_s", "training process wall time (s)", "{:.1f}"),
]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _values(rows: list[dict], key: str) -> list[float]:
    """Every value of `key` in `rows`, a list-valued key (the downstream scores per seed) flattened."""
    out: list[float] = []
    for row in rows:
        value = row.get(key, [])
        out += value if isinstance(value, list) else [value]
    return out


# --compare: the columns of the table, {results key: column title}. Against the HF recipe a random-init
# model of our shape per seed shows what pretraining bought at all.
SIDES = {
    "hf": {"ours": "mlm-train (ours)", "hf": "HF run_mlm recipe", "random": "random init"},
    "archs": {"bert": "BERT (ours)", "modernbert": "ModernBERT (ours)"},
}


def report(results: dict, compare: str = "hf") -> str:
    """Side-by-side table (mean ± std over seeds; the downstream row over every pretraining x fine-tuning
    seed) and, against the reference recipe, the goal checks."""
    who_titles = SIDES[compare]
    lines = [f"{'':38}" + "".join(f"{title:>22}" for title in who_titles.values())]
    for key, title, fmt in ROWS:
        cells = []
        for who in who_titles:
            values = _values(results[who], key)
            mean, std = _mean_std(values) if values else (None, None)
            cells.append("-" if mean is None else f"{fmt.format(mean)} ± {fmt.format(std)}")
        lines.append(f"{title:38}" + "".join(f"{c:>22}" for c in cells))
    if compare == "archs":
        return "\n".join(lines)
    for key in ("mlm_accuracy", "downstream"):
        ours, _ = _mean_std(_values(results["ours"], key))
        ref, ref_std = _mean_std(_values(results["hf"], key))
        verdict = "met" if ours >= ref - ref_std else "NOT met"
        lines.append(f"goal {key}: ours {ours:.4f} >= reference {ref:.4f} - {ref_std:.4f}: {verdict}")
    ours_t, hf_t = (_mean_std([r["loop_s"] for r in results[w]])[0] for w in ("ours", "hf"))
    lines.append(f"goal time: ours {ours_t:.1f} s vs reference {hf_t:.1f} s ({hf_t / ours_t:.2f}x faster)")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, build inputs once, train both per seed, evaluate, fine-tune, print and save."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default=".bench-quality", help="inputs and runs (inputs are reused)")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument(
        "--compare",
        choices=sorted(SIDES),
        default="hf",
        help="hf: ours vs the HF recipe (BERT); archs: our BERT vs our ModernBERT of --model's size",
    )
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--eval-rows", type=int, default=512, help="held-out rows the evaluator masks")
    parser.add_argument("--finetune-epochs", type=float, default=3.0)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument(
        "--finetune-seeds", type=int, default=1, help="fine-tuning seeds per pretrained model"
    )
    parser.add_argument(
        "--finetune-set", action="append", default=[], metavar="FLAG=VALUE", help="more mlm-finetune flags"
    )
    parser.add_argument("--shards", help="an existing shards dir (default: built under --work)")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads of every process (1: steady on a shared machine)"
    )
    parser.add_argument("--hf-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_worker:
        _hf_worker(json.loads(args.hf_worker))
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    _set_threads(args.threads)
    work = os.path.abspath(args.work)
    shards = os.path.abspath(args.shards) if args.shards else build_inputs(work, args.vocab_size)
    eval_set = masked_eval_set(shards, args.eval_rows, by_document=args.compare == "archs")
    shape = PRESETS[args.model]
    if args.compare == "archs":
        sides = {arch: (train_ours, model_section(arch, args.model)) for arch in ("bert", "modernbert")}
        shape = {"bert": shape, "modernbert": MODERNBERT_PRESETS[args.model]}
    else:
        sides = {"ours": (train_ours, model_section("bert", args.model)), "hf": (train_hf, shape)}
    tag = f"{args.model}-{args.steps}steps-lr{args.lr:g}" + ("-archs" if args.compare == "archs" else "")
    results: dict = {who: [] for who in SIDES[args.compare]}
    models: dict[str, str] = {}
    for seed in range(args.seeds):
        for who, (train, model) in sides.items():  # alternate: load drifts hit both
            out = os.path.join(work, "runs", f"{tag}-{who}-seed{seed}")
            subprocess.run(["rm", "-rf", out], check=True)
            timing = train(shards, out, model, seed, args.steps, args.lr, args.warmup)
            models[f"{who}-seed{seed}"] = timing["model_dir"]
            row = {"seed": seed, **{k: v for k, v in timing.items() if k != "model_dir"}}
            results[who].append({**row, **evaluate(timing["model_dir"], eval_set)})
            print(
                f"[quality] {who} seed {seed}: "
                + ", ".join(f"{k} {v:.4g}" for k, v in results[who][-1].items())
            )
        if args.compare == "hf":
            out = os.path.join(work, "runs", f"{tag}-random-seed{seed}")
            subprocess.run(["rm", "-rf", out], check=True)
            models[f"random-seed{seed}"] = random_init_model(models[f"ours-seed{seed}"], out, seed)
            results["random"].append({"seed": seed, **evaluate(out, eval_set)})
    # The demo's BERT-Tiny fine-tuning recipe (scripts/demo.py), not mlm-finetune's HF-like defaults.
    flags = [f"epochs={args.finetune_epochs}", f"lr={args.finetune_lr}", f"threads={args.threads}"]
    flags += ["batch-size=32", "group-by-length=true", "warmup-ratio=0.1", "weight-decay=0.01"]
    flags += args.finetune_set
    suite_out = os.path.join(work, "suite", tag)
    subprocess.run(["rm", "-rf", suite_out], check=True)
    averages = downstream_suite(
        models, suite_out, args.finetune_seeds, [f for v in flags for f in ("--set", v)]
    )
    for who, rows in results.items():
        for row in rows:
            row["downstream"] = averages[f"{who}-seed{row['seed']}"]
    settings = {k: v for k, v in vars(args).items() if k != "hf_worker"}
    with open(os.path.join(work, f"quality-{tag}.json"), "w") as f:
        json.dump(
            {"settings": settings, "shape": shape, "batch": BATCH, "seq_len": SEQ_LEN, **results}, f, indent=2
        )
    print(report(results, args.compare))


if __name__ == "__main__":
    main()
