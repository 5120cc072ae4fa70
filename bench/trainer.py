"""Benchmark: Hugging Face Trainer + BertForMaskedLM + DataCollatorForLanguageModeling (the run_mlm.py
recipe) against `python -m pretrain`, same model, same shards, same batch, fp32, one process.

Model: 4 layers, hidden 256, 4 heads, intermediate 1024 (BERT-Mini), vocabulary from the shards'
tokenizer (~30k for a BERT-like build), batch 32, seq_len 128. Both read the same rows; throughput is
non-pad tokens per second between the end of step `--skip` and the end of the last step (start-up,
JIT and the first allocations excluded on both sides). Prints both and the ratio.

    mlm-data sample-corpus /tmp/bench/corpus
    mlm-data tokenizer --input /tmp/bench/corpus --kind wordpiece --vocab-size 30000 --out /tmp/bench/tok
    mlm-data build --input /tmp/bench/corpus --tokenizer /tmp/bench/tok --out /tmp/bench/shards \
        --seq-len 128 --mode full-sentences --workers 2
    python bench/trainer.py --shards /tmp/bench/shards --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import yaml

# Run as a script, bench/ is sys.path[0] and bench/data_pipeline.py would shadow the package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

MODEL = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 1024}
BATCH = 32


def run_hf(shards: str, steps: int, skip: int) -> float:
    """Tokens/s of the HF Trainer recipe over the shards' training rows (non-pad tokens)."""
    import numpy as np
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from data_pipeline.shards import ShardReader

    reader = ShardReader(shards, split="train")
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(shards, "tokenizer"))
    seq_len = reader.seq_len

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(reader)

        def __getitem__(self, i):
            row = reader[i]
            n = int(row["length"])
            return {"input_ids": np.asarray(row["input_ids"][:n], dtype=np.int64).tolist()}

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=MODEL["hidden_size"], num_hidden_layers=MODEL["num_layers"],
        num_attention_heads=MODEL["num_heads"], intermediate_size=MODEL["intermediate_size"],
        max_position_embeddings=max(512, seq_len),
    )  # fmt: skip
    torch.manual_seed(0)
    model = BertForMaskedLM(config)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-bench-"), per_device_train_batch_size=BATCH, max_steps=steps,
        learning_rate=1e-4, warmup_steps=0, logging_strategy="no", save_strategy="no", report_to=[],
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )  # fmt: skip
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, pad_to_multiple_of=seq_len)
    trainer = Trainer(
        model=model, args=args, train_dataset=Rows(), data_collator=collator, callbacks=[Clock()]
    )
    trainer.train()
    # The sampler shuffles; the mean row length over the split is the expected tokens per sample.
    mean_tokens = float(np.mean([int(reader[i]["length"]) for i in range(min(len(reader), 5000))]))
    return (len(times) - skip) * BATCH * mean_tokens / (times[-1] - times[skip - 1])


def run_ours(shards: str, steps: int, skip: int) -> float:
    """Tokens/s of `python -m pretrain` (one process, ZeRO stage 0) from its metrics.jsonl."""
    with tempfile.TemporaryDirectory(prefix="ours-bench-") as tmp:
        cfg = {
            "run_dir": os.path.join(tmp, "run"), "precision": "fp32", "data": {"path": shards},
            "model": {**MODEL, "max_position_embeddings": 512, "pair_head": "none"},
            "train": {"max_steps": steps, "micro_batch_size": BATCH, "grad_accum_steps": 1,
                      "resume": "none", "log_every_steps": 10},
            "optim": {"lr": 1e-4}, "zero": {"stage": 0},
            "checkpoint": {"every_steps": None}, "eval": {"every_steps": None, "max_batches": 1},
            "metrics": {"tensorboard": False},
        }  # fmt: skip
        path = os.path.join(tmp, "bench.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        subprocess.run([sys.executable, "-m", "pretrain", "--config", path], check=True, env=env)
        with open(os.path.join(tmp, "run", "metrics.jsonl")) as f:
            records = {r["step"]: r for r in map(json.loads, f) if "loss" in r}
    first, last = records[skip], records[steps]
    return (last["tokens"] - first["tokens"]) / (last["time"] - first["time"])


def main() -> None:
    """Parse arguments, run both trainers one after the other, print tokens/s and the ratio."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", required=True, help="shards dir from `mlm-data build --seq-len 128`")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per trainer")
    parser.add_argument("--skip", type=int, default=5, help="steps excluded from the timing (warm-up)")
    args = parser.parse_args()
    ours = run_ours(args.shards, args.steps, args.skip)
    print(f"mlm-pretrain (python -m pretrain): {ours:,.0f} tokens/s", flush=True)
    hf = run_hf(args.shards, args.steps, args.skip)
    print(f"HF Trainer + BertForMaskedLM: {hf:,.0f} tokens/s")
    print(f"ratio ours / HF: {ours / hf:.2f}x")


if __name__ == "__main__":
    main()
