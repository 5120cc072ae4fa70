"""Benchmark on one GPU: `python -m pretrain` against the Hugging Face Trainer recipe, in one run.

Cases: BERT-base at seq 128 (micro batch 256) and BERT-large at seq 512 (micro batch 32), each in bf16
and fp16. Per case both sides train the same model (one BertConfig), on the same packed rows, with the
same micro batch, precision and step count, one after the other on the same GPU; printed per side:
non-pad tokens/s over the steps after the warm-up, MFU by two formulas and peak GPU memory; then the
ratio. Our side is the real CLI, `python -m pretrain --config RECIPE key=value...` (RECIPE:
configs/bert-base-seq128.yaml, ZeRO-1, unless --config; the overrides set the case), measured from its
metrics.jsonl; WORK/logs/ holds each side's log, headed by its command line. The peer is
`Trainer` + `BertForMaskedLM` + `DataCollatorForLanguageModeling` pinned to its best (bench/hf_mlm.py:
SDPA, bf16/fp16 autocast, fused AdamW, TF32, DataLoader workers, special-token masks precomputed).

MFU = tokens/s x FLOPs per token / peak. FLOPs per token: the model's `flops_per_token` (6 x encoder
matmul parameters + attention + the sparse head at the masked 15%; docs/training.md) and, for
comparison with published figures, 6 x all parameters. The peak is looked up from the device name
(dense bf16/fp16 tensor-core TFLOP/s from NVIDIA's data sheets, PEAK_TFLOPS) or given by --peak-tflops.
Targets (issue 8): BERT-base seq 128 bf16 on one H100 >= 740,000 tokens/s (49% MFU by 6N, about 41% by
the narrower formula) and >= 2x the HF recipe.

Inputs: shards built by the real `mlm-data` CLI from the stdlib sample corpus (or --corpus) with a 30k
WordPiece, under WORK (default .bench/gpu), reused by the next run; --shards uses a given shards dir.

    python bench/gpu.py                                  # all cases on GPU 0
    python bench/gpu.py --cases base-128 --precisions bf16 --json /tmp/gpu.json
    python bench/gpu.py --device cpu --tiny              # CI smoke: BERT-Tiny, seq 64, fp16 skipped
    python bench/gpu.py --modernbert --precisions bf16   # ModernBERT-base seq 1024: isolation x compile
    python bench/gpu.py --modernbert --device cpu --tiny --precisions fp32 --compile off   # its CI smoke

`--modernbert` times ModernBERT's step in this process (bench/modernbert_step.py: the real model and
DeepSpeed engine of configs/modernbert-base.yaml on packed synthetic rows) with and without document
isolation and compile: tokens/s, MFU by the model's flops_per_token, peak memory.

On a GPU machine without DeepSpeed (e.g. a bare PyTorch image with Python 3.12), build the missing
wheels here and carry them (deepspeed has no wheel on PyPI: `pip wheel` builds its pure-Python one):

    pip wheel --no-deps deepspeed==0.19.8 -w .whl/
    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl/ hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
        typing-inspection==0.4.5 typing-extensions==4.16.0 zstandard==0.25.0
    # there:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site python3 bench/gpu.py --json $OUT/gpu.json

(`datasets` is not needed by this benchmark; bench/data_pipeline.py needs it: add `datasets` and its
missing dependencies the same way.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass

if __package__ in (None, ""):  # `python bench/gpu.py`: bench/data_pipeline.py would shadow the package
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from bench.harness import REPO, BenchError, dotted_overrides, load_model, run_hf, run_ours  # noqa: E402
from bench.inputs import build_shards  # noqa: E402


@dataclass(frozen=True)
class Case:
    """One benchmark shape: model preset, row length, micro batch, steps and untimed warm-up steps."""

    name: str
    preset: str
    seq_len: int
    micro_batch: int
    steps: int
    skip: int


CASES = {
    "base-128": Case("base-128", "base", 128, 256, 100, 10),
    "large-512": Case("large-512", "large", 512, 32, 60, 10),
}
TINY = Case("tiny-64", "tiny", 64, 8, 10, 3)  # --tiny: CI smoke mode, any device

# Dense (no sparsity) bf16 = fp16 tensor-core TFLOP/s per GPU, NVIDIA data sheets. The first fragment
# contained in torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100", 989.4),
    ("H800", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
)
TARGET = {"case": "base-128", "precision": "bf16", "tokens_per_s": 740_000, "ratio": 2.0}


def peak_tflops_for(device_name: str) -> float | None:
    """The dense bf16/fp16 peak TFLOP/s of a GPU named `device_name`, None when it is not in the table."""
    return next((tflops for fragment, tflops in PEAK_TFLOPS if fragment in device_name), None)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="BERT-Tiny at seq 64, a few steps (CI smoke mode)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--precisions", default="bf16,fp16", help="comma-separated, of bf16, fp16, fp32")
    p.add_argument("--work", default=os.path.join(REPO, ".bench", "gpu"), help="inputs, logs, results")
    p.add_argument("--corpus", help="text corpus dir (default: `mlm-data sample-corpus`)")
    p.add_argument("--tokenizer", help="tokenizer dir (default: a WordPiece trained on the corpus)")
    p.add_argument("--shards", help="use this shards dir for every case (its seq_len is used)")
    p.add_argument(
        "--config",
        default=os.path.join(REPO, "configs", "bert-base-seq128.yaml"),
        help="recipe our side starts from (default configs/bert-base-seq128.yaml)",
    )
    p.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], help="override the recipe's zero.stage")
    p.add_argument("--micro-batch", type=int, help="override every case's micro batch")
    p.add_argument("--steps", type=int, help="override every case's step count (clamped to one epoch)")
    p.add_argument("--skip", type=int, help="override every case's untimed warm-up steps")
    p.add_argument("--peak-tflops", type=float, help="peak TFLOP/s of the device (default: from its name)")
    p.add_argument("--hf-workers", type=int, help="the peer's DataLoader workers (default: cuda 6, cpu 0)")
    p.add_argument("--json", help="write the results here as JSON (default WORK/results.json)")
    p.add_argument("--modernbert", action="store_true", help="ModernBERT's step instead (modernbert_step.py)")
    p.add_argument("--compile", choices=["off", "on", "both"], default="both", help="--modernbert's compile")
    p.add_argument("--doc-mean", type=float, default=400.0, help="--modernbert's mean document length")
    return p.parse_args(argv)


def _selection(args: argparse.Namespace) -> tuple[list[Case], list[str]]:
    """The cases and precisions asked for; raises BenchError naming an unknown one."""
    names, precisions = args.cases.split(","), args.precisions.split(",")
    choices = ((names, tuple(CASES), "--cases"), (precisions, ("bf16", "fp16", "fp32"), "--precisions"))
    for value, known, flag in choices:
        unknown = [v for v in value if v not in known]
        if unknown:
            raise BenchError(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return ([TINY] if args.tiny else [CASES[n] for n in names]), precisions


def _device(args: argparse.Namespace) -> tuple[str, float | None]:
    """(device name, peak TFLOP/s or None); raises BenchError when CUDA is asked for and absent."""
    if args.device == "cpu":
        return "cpu", args.peak_tflops
    import torch

    if not torch.cuda.is_available():
        raise BenchError("no CUDA device here; on a CPU machine run `bench/gpu.py --device cpu --tiny`")
    name = torch.cuda.get_device_name(0)
    return name, args.peak_tflops or peak_tflops_for(name)


def _sections(args, case: Case, precision: str, shards: str, run_dir: str, steps: int, peak) -> dict:
    """The bench's keys over the recipe: this case's model, batch, precision, no saves or evals between."""
    sections = {
        "run_dir": run_dir,
        "precision": precision,
        "data": {"path": shards, "seq_len": None},
        "model": {"preset": case.preset, "pair_head": "none"},
        # The HF collator masks single tokens; whole-word masking would only cost our loader thread.
        "masking": {"whole_word": False},
        "train": {
            "max_steps": steps,
            "micro_batch_size": args.micro_batch or case.micro_batch,
            "grad_accum_steps": 1,
            "global_batch_size": None,
            "resume": "none",
            "log_every_steps": steps,
        },
        # No warmup, as the HF side (bench/hf_mlm.py); the recipe's 10000 would outlast the run (refused).
        "optim": {"warmup_steps": 0},
        "checkpoint": {"every_steps": None, "every_minutes": None},
        "eval": {"every_steps": None, "max_batches": 1},
        "metrics": {"tensorboard": False, "peak_tflops_per_device": peak},
    }
    if args.zero_stage is not None:
        sections["zero"] = {"stage": args.zero_stage}
    return sections


def _steps(args, case: Case, shards: str) -> tuple[int, int]:
    """(steps, skip) for `case`, steps clamped to one epoch of the shards' training rows."""
    from data_pipeline.shards.format import ShardReader

    rows, batch = len(ShardReader(shards, split="train")), args.micro_batch or case.micro_batch
    skip = case.skip if args.skip is None else args.skip
    steps = min(args.steps or case.steps, rows // batch)
    if steps < skip + 3:
        raise BenchError(
            f"{shards} holds {rows} training rows: {steps} steps of {batch}, too few past {skip} warm-up "
            f"steps; give a larger --corpus or a smaller --micro-batch"
        )
    return steps, skip


def _mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> str:
    return "n/a" if not peak else f"{100 * tokens_per_s * flops_per_token / (peak * 1e12):.1f}%"


def run_case(args, case: Case, precision: str, shards: str, peak: float | None, workers: int) -> dict:
    """Train `case` at `precision` on both sides, print the per-side lines and the ratio; returns a record."""
    steps, skip = _steps(args, case, shards)
    with tempfile.TemporaryDirectory(prefix=f"{case.name}-{precision}-", dir=args.work) as tmp:
        overrides = dotted_overrides(
            _sections(args, case, precision, shards, os.path.join(tmp, "run"), steps, peak)
        )
        cfg, model, seq_len = load_model(args.config, overrides)
        shape = ", ".join(f"{k} {v}" for k, v in model.shape().items())
        narrow, six_n = model.flops_per_token(seq_len, cfg.masking.probability), 6 * model.count_parameters()
        print(
            f"\n== {case.name} {precision}: {cfg.model.arch} ({shape}; "
            f"{model.count_parameters() / 1e6:.1f}M parameters), seq {seq_len}, "
            f"micro batch {cfg.train.micro_batch_size}, {steps} steps (first {skip} untimed), "
            f"ZeRO-{cfg.zero.stage}\n   FLOPs per token: {narrow / 1e6:.1f} M (docs/training.md formula), "
            f"{six_n / 1e6:.1f} M (6 x all parameters)",
            flush=True,
        )
        logs = os.path.join(args.work, "logs")
        os.makedirs(logs, exist_ok=True)
        stem = os.path.join(logs, f"{case.name}-{precision}")
        ours = run_ours(args.config, overrides, skip=skip, device=args.device, log_path=f"{stem}-ours.log")
        hf = run_hf(
            cfg,
            model,
            seq_len,
            skip=skip,
            device=args.device,
            workers=workers,
            work_dir=os.path.join(tmp, "hf"),
            log_path=f"{stem}-hf.log",
        )
    for label, side in (("mlm-pretrain (python -m pretrain)", ours), ("HF Trainer + BertForMaskedLM", hf)):
        rate = side.tokens_per_s
        print(
            f"   {label:<34} {rate:>12,.0f} tokens/s  MFU {_mfu(rate, narrow, peak)} / "
            f"{_mfu(rate, six_n, peak)} (formula / 6N)  peak {side.memory_kind} "
            f"{side.peak_memory_gib:.2f} GiB"
        )
    ratio = ours.tokens_per_s / hf.tokens_per_s
    print(f"   ratio ours / HF: {ratio:.2f}x", flush=True)
    loader = hf.extra.get("loader_tokens_per_s", 0.0)
    if loader < 1.5 * hf.tokens_per_s:
        print(
            f"   warning: the HF DataLoader alone delivers {loader:,.0f} tokens/s, under 1.5x its training "
            f"rate: the peer may be input-bound; raise --hf-workers"
        )
    return {
        "case": case.name,
        "precision": precision,
        "seq_len": seq_len,
        "micro_batch": cfg.train.micro_batch_size,
        "steps": steps,
        "skip": skip,
        "zero_stage": cfg.zero.stage,
        "parameters": model.count_parameters(),
        "flops_per_token": narrow,
        "flops_per_token_6n": six_n,
        "peak_tflops": peak,
        "ours": vars(ours),
        "hf": vars(hf),
        "ratio": ratio,
    }


def _summary(results: list[dict], device: str) -> None:
    """A Markdown table of every case (for docs/training.md), then the target and this run's figures."""
    print(
        "\n| case | precision | mlm-pretrain tokens/s | HF tokens/s | ratio | MFU ours (formula / 6N) "
        "| peak memory ours / HF (GiB) |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    for r in results:
        ours, hf, peak = r["ours"], r["hf"], r["peak_tflops"]
        rate = ours["tokens_per_s"]
        mfu = f"{_mfu(rate, r['flops_per_token'], peak)} / {_mfu(rate, r['flops_per_token_6n'], peak)}"
        memory = f"{ours['peak_memory_gib']:.2f} / {hf['peak_memory_gib']:.2f}"
        print(
            f"| {r['case']} | {r['precision']} | {rate:,.0f} | {hf['tokens_per_s']:,.0f} | "
            f"{r['ratio']:.2f}x | {mfu} | {memory} |"
        )
    t = TARGET
    line = f"target ({t['case']} {t['precision']}, one H100): >= {t['tokens_per_s']:,} tokens/s, "
    line += f">= {t['ratio']}x HF"
    for r in results:
        if r["case"] == t["case"] and r["precision"] == t["precision"]:
            line += f"; this run on {device}: {r['ours']['tokens_per_s']:,.0f} tokens/s, {r['ratio']:.2f}x"
    print(line)


def _modernbert(args: argparse.Namespace) -> int:
    """`--modernbert`: every isolation x compile variant of ModernBERT's step, a table, JSON. Exit code."""
    from bench import modernbert_step
    from pretrain.runtime.distributed import init_distributed

    if args.device == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"  # also on a GPU machine: the model then picks a CPU backend
    try:
        os.makedirs(args.work, exist_ok=True)
        name, peak = _device(args)
        precision = args.precisions.split(",")[0]
        if precision not in ("bf16", "fp32") or (
            precision == "bf16" and args.device == "cpu" and not args.tiny
        ):
            raise BenchError(f"--modernbert runs bf16 (GPU) or fp32, not {precision!r} on {args.device}")
        info = init_distributed(timeout_minutes=10)
        print(f"device: {args.device} {name}; peak {peak or 'unknown (MFU n/a)'} TFLOP/s", flush=True)
        records = modernbert_step.run(
            info.device,
            args.tiny,
            precision,
            args.compile,
            args.doc_mean,
            micro_batch=args.micro_batch,
            steps=args.steps,
            skip=args.skip,
        )
    except (BenchError, ValueError) as exc:
        print(f"bench/gpu.py: error: {exc}", file=sys.stderr)
        return 1
    modernbert_step.print_table(records, peak, name)
    out = args.json or os.path.join(args.work, "modernbert.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"device": name, "results": records}, f, indent=1)
    print(f"results: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the selected cases on both sides; print per-case lines, a summary table; write JSON. Exit code."""
    args = _parse(argv)
    if args.modernbert:
        return _modernbert(args)
    try:
        os.makedirs(args.work, exist_ok=True)
        device, peak = _device(args)
        workers = args.hf_workers if args.hf_workers is not None else (6 if args.device == "cuda" else 0)
        print(
            f"device: {args.device} {device}; peak "
            f"{'unknown (MFU n/a; pass --peak-tflops)' if not peak else f'{peak:g} TFLOP/s'}"
        )
        cases, precisions = _selection(args)
        shards: dict[int, str] = {}
        results = []
        for case in cases:
            for precision in precisions:
                if precision == "fp16" and args.device == "cpu":
                    print(f"\n== {case.name} fp16: skipped (fp16 needs a GPU; the trainer refuses it on CPU)")
                    continue
                if args.shards:
                    path = args.shards
                elif case.seq_len not in shards:
                    path = shards[case.seq_len] = build_shards(
                        args.work,
                        case.seq_len,
                        corpus=args.corpus,
                        tokenizer=args.tokenizer,
                        vocab_size=2000 if args.tiny else 30000,
                        max_corpus_bytes=1_000_000 if args.tiny and not args.corpus else None,
                    )
                else:
                    path = shards[case.seq_len]
                results.append(run_case(args, case, precision, path, peak, workers))
    except (BenchError, ValueError) as exc:  # DataError and ConfigError are ValueErrors
        print(f"bench/gpu.py: error: {exc}", file=sys.stderr)
        return 1
    _summary(results, device)
    out = args.json or os.path.join(args.work, "results.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"device": device, "results": results}, f, indent=1)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
