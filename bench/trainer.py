"""Benchmark: Hugging Face Trainer + BertForMaskedLM + DataCollatorForLanguageModeling (the run_mlm.py
recipe) against `python -m pretrain`, same model, same shards, same batch, fp32, one process.

Model: 4 layers, hidden 256, 4 heads, intermediate 1024 (BERT-Mini), vocabulary from the shards'
tokenizer (~30k for a BERT-like build), batch 32, seq_len 128. Both read the same rows; throughput is
non-pad tokens per second between the end of step `--skip` and the end of the last step (start-up,
JIT and the first allocations excluded on both sides). Prints both and the ratio. Both sides run as
processes through bench/harness.py (the same pieces bench/gpu.py uses; the peer is bench/hf_mlm.py).

    mlm-data sample-corpus /tmp/bench/corpus
    mlm-data tokenizer --input /tmp/bench/corpus --kind wordpiece --vocab-size 30000 --out /tmp/bench/tok
    mlm-data build --input /tmp/bench/corpus --tokenizer /tmp/bench/tok --out /tmp/bench/shards \
        --seq-len 128 --mode full-sentences --workers 2
    python bench/trainer.py --shards /tmp/bench/shards --steps 40
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

if __package__ in (None, ""):  # `python bench/trainer.py`: bench/data_pipeline.py would shadow the package
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from bench.harness import load_model, run_hf, run_ours, write_config  # noqa: E402

BATCH = 32


def main() -> None:
    """Parse arguments, run both trainers one after the other, print tokens/s and the ratio."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", required=True, help="shards dir from `mlm-data build --seq-len 128`")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per trainer")
    parser.add_argument("--skip", type=int, default=5, help="steps excluded from the timing (warm-up)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp:
        config = write_config(
            os.path.join(tmp, "bench.yaml"),
            {
                "run_dir": os.path.join(tmp, "run"),
                "precision": "fp32",
                "data": {"path": args.shards},
                "model": {"preset": "mini", "max_position_embeddings": 512, "pair_head": "none"},
                "train": {
                    "max_steps": args.steps,
                    "micro_batch_size": BATCH,
                    "grad_accum_steps": 1,
                    "resume": "none",
                    "log_every_steps": 10,
                },
                "optim": {"lr": 1e-4},
                "zero": {"stage": 0},
                "checkpoint": {"every_steps": None},
                "eval": {"every_steps": None, "max_batches": 1},
                "metrics": {"tensorboard": False},
            },
        )
        cfg, model, seq_len = load_model(config)
        ours = run_ours(config, skip=args.skip, device="cpu", log_path=os.path.join(tmp, "ours.log"))
        print(f"mlm-pretrain (python -m pretrain): {ours.tokens_per_s:,.0f} tokens/s", flush=True)
        hf = run_hf(
            cfg,
            model,
            seq_len,
            skip=args.skip,
            device="cpu",
            workers=0,
            work_dir=os.path.join(tmp, "hf"),
            log_path=os.path.join(tmp, "hf.log"),
        )
    print(f"HF Trainer + BertForMaskedLM: {hf.tokens_per_s:,.0f} tokens/s")
    print(f"ratio ours / HF: {ours.tokens_per_s / hf.tokens_per_s:.2f}x")


if __name__ == "__main__":
    main()
