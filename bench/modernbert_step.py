"""ModernBERT's training step on one device: tokens/s, MFU and peak memory, with and without document
isolation and compile (`python bench/gpu.py --modernbert`; its CPU smoke mode runs in CI).

Each variant builds the model and the real DeepSpeed engine from configs/modernbert-base.yaml (bf16, ZeRO-1,
the recipe's attention backend choice: auto) in this process, then times forward + backward + optimizer
step on packed rows of seq_len tokens. The rows are synthetic, made here: random token ids, documents of
exponentially distributed lengths (mean --doc-mean tokens) packed end to end as full-sentence packing
does, 30% of the tokens masked. "isolated" hands the model each row's documents (the document keys of
pretrain/data/documents.py); "one document" hands it every row as a single document, which is the same
work for BERT-style attention over the whole row (what isolation costs or saves). The loader thread,
checkpoints and evaluation are not in the timed loop (bench/gpu.py's BERT cases time the whole CLI).

MFU = tokens/s x the model's flops_per_token(seq_len, 0.3) / peak TFLOP/s (bench/gpu.py's table); 6N is
6 x all parameters. Anchor: ModernBERT's published run, 1.7T tokens in 194 h on 8 x H100 = about 304k
tokens/s per GPU; target: >= 450k tokens/s per H100.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

RECIPE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "modernbert-base.yaml"
)
TARGET_TOKENS_PER_S = 450_000
MASKED_FRACTION = 0.3


@dataclass(frozen=True)
class Shape:
    """What one ModernBERT bench case trains: preset, vocabulary, row length, micro batch, steps, warm-up."""

    name: str
    preset: str
    vocab_size: int
    seq_len: int
    micro_batch: int
    steps: int
    skip: int


BASE_1024 = Shape("modernbert-base-1024", "base", 50368, 1024, 96, 30, 5)
TINY_128 = Shape("modernbert-tiny-128", "tiny", 2000, 128, 4, 4, 1)  # CPU smoke mode
VARIANTS = [(isolated, compiled) for compiled in (False, True) for isolated in (True, False)]


def packed_rows(shape: Shape, doc_mean: float, isolated: bool, seed: int) -> dict[str, np.ndarray]:
    """One micro-batch of full rows: ids, document starts (each row a single document unless `isolated`)
    and the 30% masked flat positions with their labels."""
    from pretrain.data.documents import document_inputs

    rng = np.random.default_rng(seed)
    rows, seq = shape.micro_batch, shape.seq_len
    ids = rng.integers(5, shape.vocab_size, (rows, seq))
    starts = np.zeros(rows * seq, dtype=bool)
    if isolated:  # documents end to end over the batch; a row edge cuts one, whose rest opens the next row
        lengths = np.maximum(1, rng.exponential(doc_mean, size=int(3 * rows * seq / doc_mean) + 8)).astype(
            int
        )
        bounds = np.cumsum(lengths)
        starts[bounds[bounds < rows * seq]] = True
    keys = document_inputs(starts.reshape(rows, seq), np.full(rows, seq))
    masked = np.flatnonzero(rng.random(rows * seq) < MASKED_FRACTION)
    return {"input_ids": ids, "masked_positions": masked, "masked_labels": ids.reshape(-1)[masked], **keys}


def _engine(shape: Shape, device: str, precision: str, compiled: bool, run_dir: str):
    """(engine, model) of the recipe at `shape`, compiled or not, on a world of one."""
    import torch

    from pretrain.config import load_config
    from pretrain.models.registry import build_model
    from pretrain.runtime.engine import initialize_engine

    overrides = [
        f"run_dir={run_dir}",
        f"precision={precision}",
        f"model.preset={shape.preset}",
        f"model.compile={'true' if compiled else 'false'}",
        f"train.micro_batch_size={shape.micro_batch}",
        "train.grad_accum_steps=1",
        "train.global_batch_size=null",
        f"train.max_steps={shape.steps}",
        "optim.warmup_steps=0",
        "phases=[]",  # the recipe's context-extension phases start long after a bench's few steps
    ]
    cfg = load_config(RECIPE, overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=shape.vocab_size, pad_id=0, rows_have_pairs=False)
    engine = initialize_engine(cfg, model.to(device), 1, on_gpu=device.startswith("cuda"))
    return engine, model


def run_variant(
    shape: Shape, device: str, precision: str, isolated: bool, compiled: bool, doc_mean: float
) -> dict:
    """Time `shape.steps` steps after `shape.skip` untimed ones; returns the variant's record."""
    import torch

    on_gpu = device.startswith("cuda")
    with tempfile.TemporaryDirectory(prefix="modernbert-bench-") as tmp:
        engine, model = _engine(shape, device, precision, compiled, tmp)
        batches = [packed_rows(shape, doc_mean, isolated, seed) for seed in range(4)]
        tensors = [{k: torch.from_numpy(v) for k, v in b.items()} for b in batches]
        if on_gpu:
            tensors = [{k: v.pin_memory() for k, v in b.items()} for b in tensors]
            torch.cuda.reset_peak_memory_stats()
        start = None
        for step in range(shape.steps + shape.skip):
            if step == shape.skip:
                if on_gpu:
                    torch.cuda.synchronize()
                start = time.perf_counter()
            host = tensors[step % len(tensors)]
            batch = {k: v.to(device, non_blocking=True) for k, v in host.items()}
            out = engine(**batch)
            engine.backward(out.mlm_loss_sum / host["masked_labels"].numel())  # count from the CPU batch
            engine.step()
        if on_gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak_gib = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else float("nan")
        tokens = shape.steps * shape.micro_batch * shape.seq_len  # full rows: every token is a real one
        record = {
            "case": shape.name,
            "isolated": isolated,
            "compiled": compiled,
            "backend": model.backend.name,
            "precision": precision,
            "documents_per_row": float(
                np.mean([len(b["cu_seqlens"]) - 1 for b in batches]) / shape.micro_batch
            ),
            "tokens_per_s": tokens / seconds,
            "flops_per_token": model.flops_per_token(shape.seq_len, MASKED_FRACTION),
            "flops_per_token_6n": 6 * model.count_parameters(),
            "peak_memory_gib": peak_gib,
        }
        del engine, model
        return record


def print_table(records: list[dict], peak: float | None, device: str) -> None:
    """The variants as a Markdown table (for docs/training.md), then the target line."""

    def mfu(rate: float, flops: float) -> str:
        return "n/a" if not peak else f"{100 * rate * flops / (peak * 1e12):.1f}%"

    print(
        "\n| case | documents | compile | backend | tokens/s | MFU (formula / 6N) | peak memory (GiB) |\n"
        "| --- | --- | --- | --- | --- | --- | --- |"
    )
    for r in records:
        documents = f"isolated ({r['documents_per_row']:.1f} per row)" if r["isolated"] else "one per row"
        rate = r["tokens_per_s"]
        print(
            f"| {r['case']} {r['precision']} | {documents} | {'on' if r['compiled'] else 'off'} | "
            f"{r['backend']} | "
            f"{rate:,.0f} | {mfu(rate, r['flops_per_token'])} / {mfu(rate, r['flops_per_token_6n'])} | "
            f"{r['peak_memory_gib']:.2f} |"
        )
    best = max((r["tokens_per_s"] for r in records if r["isolated"]), default=0.0)
    print(
        f"target (ModernBERT-base, seq 1024, bf16, isolated, one H100): >= {TARGET_TOKENS_PER_S:,} tokens/s; "
        f"best isolated variant on {device}: {best:,.0f} tokens/s"
    )


def run(
    device: str, tiny: bool, precision: str, compile_modes: str, doc_mean: float, **replace: int | None
) -> list[dict]:
    """Every variant (isolation x compile, compile per `compile_modes`: off, on or both) of the case;
    `replace` overrides the case's micro_batch, steps or skip (None keeps it)."""
    shape = dataclasses.replace(
        TINY_128 if tiny else BASE_1024, **{k: v for k, v in replace.items() if v is not None}
    )
    wanted = {"off": (False,), "on": (True,), "both": (False, True)}[compile_modes]
    records = []
    for isolated, compiled in VARIANTS:
        if compiled not in wanted:
            continue
        record = run_variant(shape, device, precision, isolated, compiled, doc_mean)
        print(
            f"   {shape.name} {precision} {'isolated' if isolated else 'one document'} "
            f"compile {'on' if compiled else 'off'} ({record['backend']}): "
            f"{record['tokens_per_s']:,.0f} tokens/s",
            flush=True,
        )
        records.append(record)
    return records
