"""The Hugging Face peer: `Trainer` + `BertForMaskedLM` + `DataCollatorForLanguageModeling` (the recipe of
transformers' run_mlm.py) on our shards' rows, as one process that writes one JSON result.

The peer is pinned to its best so that a ratio cannot be won by weakening it: SDPA attention (asserted),
bf16/fp16 autocast through `TrainingArguments`, `optim="adamw_torch_fused"`, TF32 on CUDA, the same
packed rows with their special-token masks precomputed (so the collator does no per-token Python),
`dataloader_num_workers` workers with pinned memory and persistent workers, full batches only. After
training, the same DataLoader is timed alone: if it is not well above the training rate, the peer may be
input-bound and the benchmark says so.

    python -m bench.hf_mlm --shards DIR --bert-config config.json --precision bf16 --batch 256 \
        --steps 100 --skip 10 --device cuda --workers 6 --out result.json --output-dir /tmp/hf

Result keys: tokens_per_s (non-pad tokens per second between the end of step `skip` and the end of the
last step), peak_memory_gib, memory_kind, loader_tokens_per_s, attn_implementation, parameters.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

if __package__ in (None, ""):  # `python bench/hf_mlm.py`: bench/data_pipeline.py would shadow the package
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="shards dir (manifest.json, tokenizer/)")
    p.add_argument("--bert-config", required=True, help="transformers BertConfig JSON (our model's)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], required=True)
    p.add_argument("--batch", type=int, required=True, help="sequences per step")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--skip", type=int, required=True, help="warm-up steps excluded from the timing")
    p.add_argument("--seq-len", type=int, default=None, help="rows cut to this length (default: the shards')")
    p.add_argument("--device", choices=["cuda", "cpu"], required=True)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mlm-probability", type=float, default=0.15)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999))
    p.add_argument("--eps", type=float, default=1e-6)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--out", required=True, help="where the JSON result goes")
    p.add_argument("--output-dir", required=True, help="the Trainer's output_dir (nothing is saved there)")
    return p.parse_args(argv)


class PackedRows:
    """Torch-style dataset over the shards' training rows: input_ids and special_tokens_mask as lists.

    This is what run_mlm.py's `group_texts` hands the collator (`return_special_tokens_mask=True`), made
    from our packed rows; `mean_length` is the mean non-pad length, for counting tokens.
    """

    def __init__(self, shards: str, seq_len: int | None) -> None:
        """Open the train split of `shards`; rows are cut to `seq_len` (None: the shards' length)."""
        import numpy as np

        from data_pipeline.shards.format import ShardReader

        self.reader = ShardReader(shards, split="train")
        self.seq_len = seq_len or self.reader.seq_len
        self.specials = np.array(sorted(set(self.reader.manifest.tokenizer["special_ids"].values())))
        sample = range(min(len(self.reader), 5000))
        self.mean_length = float(np.mean([min(int(self.reader[i]["length"]), self.seq_len) for i in sample]))

    def __len__(self) -> int:
        """Number of training rows."""
        return len(self.reader)

    def __getitem__(self, index: int) -> dict:
        """{"input_ids": [...], "special_tokens_mask": [...]} of row `index`, pad removed."""
        import numpy as np

        row = self.reader[index]
        ids = row["input_ids"][: min(int(row["length"]), self.seq_len)].astype(np.int64)
        return {"input_ids": ids.tolist(), "special_tokens_mask": np.isin(ids, self.specials).tolist()}


def run(args: argparse.Namespace) -> dict:
    """Train `args.steps` steps with the HF recipe; returns the result dict described in the docstring."""
    import torch
    from torch.utils.data import Dataset
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    cuda = args.device == "cuda"
    rows = PackedRows(args.shards, args.seq_len)
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(args.shards, "tokenizer"))

    class Rows(Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return rows[i]

    marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step in (args.skip, args.steps):
                if cuda:
                    torch.cuda.synchronize()  # the step's kernels have run, not only been queued
                marks[state.global_step] = time.perf_counter()

    config = BertConfig.from_json_file(args.bert_config)
    config.architectures = ["BertForMaskedLM"]
    config._attn_implementation = "sdpa"
    torch.manual_seed(args.seed)
    model = BertForMaskedLM(config)
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"BertForMaskedLM chose {model.config._attn_implementation!r} attention, not sdpa")
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        adam_beta1=args.betas[0],
        adam_beta2=args.betas[1],
        adam_epsilon=args.eps,
        max_grad_norm=args.grad_clip,
        warmup_steps=0,
        optim="adamw_torch_fused",
        bf16=args.precision == "bf16",
        fp16=args.precision == "fp16",
        tf32=True if cuda else None,
        use_cpu=not cuda,
        dataloader_num_workers=args.workers,
        dataloader_pin_memory=cuda,
        dataloader_persistent_workers=args.workers > 0,
        dataloader_drop_last=True,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
    )
    collator = DataCollatorForLanguageModeling(
        tokenizer, mlm_probability=args.mlm_probability, pad_to_multiple_of=rows.seq_len
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=Rows(), data_collator=collator, callbacks=[Clock()]
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    if set(marks) != {args.skip, args.steps}:
        raise RuntimeError(f"the Trainer stopped early: timed steps seen {sorted(marks)}")
    tokens = (args.steps - args.skip) * args.batch * rows.mean_length
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated() / 2**30, "GPU allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "RSS"  # KiB on Linux
    return {
        "tokens_per_s": tokens / (marks[args.steps] - marks[args.skip]),
        "peak_memory_gib": peak,
        "memory_kind": kind,
        "loader_tokens_per_s": _loader_rate(trainer.get_train_dataloader(), args, rows.mean_length),
        "attn_implementation": model.config._attn_implementation,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _loader_rate(loader, args: argparse.Namespace, mean_length: float) -> float:
    """Tokens/s of the Trainer's own DataLoader alone (batches to the device, no model)."""
    it = iter(loader)
    for _ in range(args.workers + 1):  # each worker's first batch includes its start-up
        next(it)
    n = max(5, min(args.steps, 40))
    start = time.perf_counter()
    for _ in range(n):
        next(it)
    return n * args.batch * mean_length / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    """Run the recipe and write the JSON result to --out; returns 0."""
    args = _parse(argv)
    from data_pipeline.integrity import write_json_atomic

    write_json_atomic(args.out, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
