"""Train several configs one after another on ONE set of ranks: `torchrun -m tests.integration.multi_run
CONFIG...` (a test helper; see `run_pretrain_configs` in conftest.py).

Each config runs through `pretrain.__main__.run_training`, the CLI's own code path once the process group
exists, so exit codes and the one-line errors are the CLI's; what is saved is the process start-up,
torch and DeepSpeed imports and the rendezvous per config. Rank 0 prints `multi_run: start CONFIG` before
and `multi_run: exit CONFIG CODE` after each config on stderr; the exit code is 1 if any config failed.
"""

from __future__ import annotations

import logging
import os
import sys


def main(configs: list[str]) -> int:
    """Run `configs` in order on this rank; returns 0 when every one returned 0."""
    from pretrain.runtime.distributed import prepare_environment

    on_gpu = prepare_environment()
    from pretrain.__main__ import run_training
    from pretrain.config import load_config
    from pretrain.runtime.collectives import shutdown
    from pretrain.runtime.distributed import init_distributed

    rank = int(os.environ["RANK"])
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
    )
    info = init_distributed(timeout_minutes=5.0)
    codes = []
    try:
        for path in configs:
            if rank == 0:
                print(f"multi_run: start {path}", file=sys.stderr, flush=True)
            codes.append(run_training(load_config(path), info, on_gpu=on_gpu))
            if rank == 0:
                print(f"multi_run: exit {path} {codes[-1]}", file=sys.stderr, flush=True)
    finally:
        shutdown()
    return 0 if not any(codes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
