"""The tables of docs/scaling.md, computed: ZeRO communication and checkpoint bytes, preprocessing time.

On paper, not measured: every input is a parameter count from `pretrain.models.bert.model` (built on the meta
device from the shipped YAMLs), a formula from the ZeRO paper (Rajbhandari et al. 2020, section 7) or a
figure measured by `make bench-data` (docs/data_pipeline.md). Run it to reproduce the doc:

    python bench/scaling.py                     # Markdown tables on stdout
    python bench/scaling.py --vocab-size 30000 --bytes-per-token 4.5 --tokens-per-core-s 0.85e6
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

if __package__ in (None, ""):  # `python bench/scaling.py`: bench/data_pipeline.py would shadow the package
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from bench.harness import REPO  # noqa: E402

MODELS = {  # name -> (config file, overrides a bare model file needs to load, sequence length)
    "BERT-base": ("configs/bert-base-seq128.yaml", [], 128),
    "BERT-large": ("configs/models/large.yaml", ["run_dir=unused", "data.path=unused"], 512),
}
GPUS = (8, 64, 512)
GPUS_PER_NODE = 8
LINKS_GBIT = (200, 400)
BYTES_16BIT, BYTES_FP32_MASTER, BYTES_ADAM = 2, 4, 8  # per parameter
# docs/data_pipeline.md "Speed": `mlm-data build --workers 2` without its start-up, 1.70 and 1.87 M
# tokens/s on 2 cores (12 MB sample corpus), the lower per core; 46 MB gave 12.0 M tokens (3.83 B/token).
TOKENS_PER_CORE_S = 1.70e6 / 2
BYTES_PER_TOKEN = 46e6 / 12.0e6
# The per-GPU compute rate of the BERT-base target (issue 8): 740k tokens/s at seq 128 on one H100.
TARGET_BASE_TOKENS_PER_S = 740e3


@dataclass(frozen=True)
class Model:
    """What the tables need of a model: distinct parameters and training FLOPs per token at its seq."""

    params: int
    seq_len: int
    flops_per_token: float


def load_model(name: str, vocab_size: int) -> Model:
    """`name` as the trainer builds it from its YAML (meta device, with the NSP head): counts, FLOPs."""
    import torch

    from pretrain.config import load_config
    from pretrain.models.registry import build_model

    path, overrides, seq_len = MODELS[name]
    cfg = load_config(os.path.join(REPO, path), overrides)
    with torch.device("meta"):
        model = build_model(cfg.model, vocab_size=vocab_size, pad_id=0, rows_have_pairs=True)
    return Model(model.count_parameters(), seq_len, model.flops_per_token(seq_len, cfg.masking.probability))


def step_bytes_per_gpu(stage: int, params: int, gpus: int, accum: int = 1) -> float:
    """Bytes one GPU sends per optimizer step under ZeRO `stage` (ring collectives, 16-bit payloads).

    A ring all-reduce sends 2(N-1)/N x S per GPU; a reduce-scatter or an all-gather (N-1)/N x S, S the
    buffer's bytes (2 x params: DeepSpeed reduces bf16/fp16 gradients in their own dtype and gathers
    16-bit parameters). Stage 0: one gradient all-reduce per step. Stage 1: reduce-scatter of gradients at
    the boundary + all-gather of updated parameters. Stage 2: a reduce-scatter per micro-batch (gradients
    are not kept whole) + the all-gather. Stage 3: per micro-batch, all-gather of parameters in forward and
    again in backward + reduce-scatter of gradients (parameters below DeepSpeed's persistence threshold
    stay whole, so this is an upper bound).
    """
    s, f = BYTES_16BIT * params, (gpus - 1) / gpus
    return {0: 2 * f * s, 1: 2 * f * s, 2: (accum + 1) * f * s, 3: 3 * accum * f * s}[stage]


def checkpoint_bytes(stage: int, params: int, gpus: int) -> tuple[float, float, float]:
    """(total, busiest rank, busiest node) bytes of one DeepSpeed checkpoint with AdamW.

    16-bit module weights (2 B/param) are saved by rank 0 at stages 0-2 and partitioned at stage 3; the
    optimizer state (fp32 master 4 B + Adam moments 8 B per param) is whole on rank 0 at stage 0
    (DeepSpeed's fp16/bf16 unfused optimizer) and partitioned over the ranks at stages 1-3. The busiest
    node is node 0: rank 0 plus GPUS_PER_NODE - 1 ranks writing their own partitions.
    """
    module, optimizer = BYTES_16BIT * params, (BYTES_FP32_MASTER + BYTES_ADAM) * params
    total = module + optimizer
    if stage == 0:
        return total, total, total
    if stage in (1, 2):
        return total, module + optimizer / gpus, module + GPUS_PER_NODE * optimizer / gpus
    return total, total / gpus, GPUS_PER_NODE * total / gpus


def seconds(nbytes: float, gbit_per_s: float) -> float:
    """Seconds to move `nbytes` over a link of `gbit_per_s` gigabits per second."""
    return nbytes * 8 / (gbit_per_s * 1e9)


def _fmt_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def communication_table(models: dict[str, Model]) -> list[str]:
    """Markdown rows: bytes per GPU per optimizer step and time at each link speed, per model/stage/N.

    Break-even: the tokens each GPU must process per optimizer step for its compute (at the FLOP rate
    of the BERT-base target) to last as long as the step's communication, i.e. to hide it with overlap.
    """
    flop_rate = TARGET_BASE_TOKENS_PER_S * models["BERT-base"].flops_per_token
    links = " | ".join(f"time at {g} Gb/s per node" for g in LINKS_GBIT)
    rows = [
        f"| model | ZeRO | GPUs (nodes) | sent per GPU per step | {links} | break-even tokens/GPU/step |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, model in models.items():
        rate = flop_rate / model.flops_per_token
        for stage in range(4):
            for gpus in GPUS:
                v = step_bytes_per_gpu(stage, model.params, gpus)
                times = [seconds(v, g) for g in LINKS_GBIT]
                even = " / ".join(f"{t * rate:,.0f}" for t in times)
                cells = " | ".join(f"{t * 1e3:.1f} ms" for t in times)
                where = f"{gpus} ({gpus // GPUS_PER_NODE})"
                rows.append(f"| {name} | {stage} | {where} | {_fmt_bytes(v)} | {cells} | {even} |")
    return rows


def accumulation_table(models: dict[str, Model], accum: int, gpus: int) -> list[str]:
    """Markdown rows: bytes per GPU per optimizer step with `accum` micro-batches per step, at `gpus`."""
    link = LINKS_GBIT[0]
    rows = [
        f"| model | ZeRO | per GPU per step, A = 1 | A = {accum} | time at {link} Gb/s, A = {accum} |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, model in models.items():
        for stage in range(4):
            one, many = (step_bytes_per_gpu(stage, model.params, gpus, a) for a in (1, accum))
            rows.append(
                f"| {name} | {stage} | {_fmt_bytes(one)} | {_fmt_bytes(many)} "
                f"| {seconds(many, link) * 1e3:.0f} ms |"
            )
    return rows


def checkpoint_table(models: dict[str, Model]) -> list[str]:
    """Markdown rows: checkpoint bytes per stage and the busiest node's write time at each link speed."""
    links = " | ".join(f"node 0 at {g} Gb/s" for g in LINKS_GBIT)
    rows = [
        f"| model | ZeRO | GPUs | checkpoint total | rank 0 writes | node 0 writes | {links} |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, model in models.items():
        for stage in range(4):
            for gpus in GPUS:
                total, rank, node = checkpoint_bytes(stage, model.params, gpus)
                cells = " | ".join(f"{seconds(node, g) * 1e3:.0f} ms" for g in LINKS_GBIT)
                rows.append(
                    f"| {name} | {stage} | {gpus} | {_fmt_bytes(total)} | {_fmt_bytes(rank)} "
                    f"| {_fmt_bytes(node)} | {cells} |"
                )
    return rows


def preprocessing_table(tib: float, tokens_per_core_s: float, bytes_per_token: float) -> list[str]:
    """Markdown rows: wall time of `mlm-data build` over `tib` TiB as K array tasks of 32 cores each."""
    tokens = tib * 2**40 / bytes_per_token
    core_s = tokens / tokens_per_core_s
    rows = [
        f"{tib:g} TiB of text = {tokens:.3g} tokens at {bytes_per_token:.2f} bytes/token; "
        f"{core_s / 3600:,.0f} core-hours at {tokens_per_core_s / 1e6:.2f} M tokens/s per core; "
        f"shards {3 * tokens / 1e12:.2f} TB (uint16 ids + uint8 word starts)",
        "",
        "| array tasks K (32 cores each) | wall time | input read per task |",
        "| --- | --- | --- |",
    ]
    for k in (1, 8, 32, 128):
        wall = core_s / (k * 32)
        read = 32 * tokens_per_core_s * bytes_per_token
        rows.append(f"| {k} | {wall / 60:.1f} min | {read / 1e6:.0f} MB/s |")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the three tables (Markdown) for the given assumptions; returns 0."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab-size", type=int, default=30522, help="vocabulary (default: BERT's 30522)")
    p.add_argument("--tokens-per-core-s", type=float, default=TOKENS_PER_CORE_S)
    p.add_argument("--bytes-per-token", type=float, default=BYTES_PER_TOKEN)
    p.add_argument("--tib", type=float, default=1.0, help="corpus size in TiB")
    p.add_argument("--accum", type=int, default=4, help="micro-batches per step for the accumulation table")
    args = p.parse_args(argv)
    models = {name: load_model(name, args.vocab_size) for name in MODELS}
    for name, m in models.items():
        print(
            f"{name}: {m.params:,} parameters (vocabulary {args.vocab_size}, NSP head), "
            f"{m.flops_per_token / 1e6:.0f} M training FLOPs per token at seq {m.seq_len}"
        )
    print()
    print("\n".join(communication_table(models)) + "\n")
    print("\n".join(accumulation_table(models, args.accum, GPUS[-1])) + "\n")
    print("\n".join(checkpoint_table(models)) + "\n")
    print("\n".join(preprocessing_table(args.tib, args.tokens_per_core_s, args.bytes_per_token)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
