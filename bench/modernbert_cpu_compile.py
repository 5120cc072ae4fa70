"""CPU speed of ModernBERT-tiny, eager vs per-layer compiled (model.compile): the median process CPU time
of a training step (forward + backward + AdamW, no DeepSpeed), one thread, the same packed batches (4 x 128
tokens, 30% masked), the two models' steps interleaved so a loaded machine slows both alike. CPU time, not
wall time: on a shared machine wall time measures the neighbours.

    OMP_NUM_THREADS=1 python bench/modernbert_cpu_compile.py [--steps 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

if __package__ in (None, ""):  # `python bench/modernbert_cpu_compile.py`: the checkout first on the path
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from bench.modernbert_step import TINY_128, packed_rows  # noqa: E402
from pretrain.models.modernbert.config import ModernBertModelConfig  # noqa: E402
from pretrain.models.modernbert.model import build_model  # noqa: E402


def _trainee(compiled: bool):
    torch.manual_seed(0)
    cfg = ModernBertModelConfig(preset="tiny", compile=compiled)
    model = build_model(cfg, vocab_size=TINY_128.vocab_size, pad_id=0, rows_have_pairs=False).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def _step(model, optimizer, batch) -> float:
    """CPU seconds of one training step."""
    start = time.process_time()
    out = model(**batch)
    (out.mlm_loss_sum / batch["masked_labels"].numel()).backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    """Print each mode's median CPU time per step and tokens per CPU-second, then the speed-up."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per mode")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    batches = [
        {k: torch.from_numpy(v) for k, v in packed_rows(TINY_128, 40, True, s).items()} for s in range(4)
    ]
    trainees = {mode: _trainee(mode) for mode in (False, True)}
    for model, optimizer in trainees.values():
        for batch in batches:  # warm-up: the compiled one compiles here
            _step(model, optimizer, batch)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.steps):
        for mode, (model, optimizer) in trainees.items():
            times[mode].append(_step(model, optimizer, batches[i % len(batches)]))
    tokens = TINY_128.micro_batch * TINY_128.seq_len
    medians = {mode: statistics.median(t) for mode, t in times.items()}
    for mode, median in medians.items():
        label = "on " if mode else "off"
        print(
            f"compile {label}: {median * 1e3:.1f} ms CPU per step, "
            f"{tokens / median:,.0f} tokens per CPU-second"
        )
    print(f"speed-up compiled / eager: {medians[False] / medians[True]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
