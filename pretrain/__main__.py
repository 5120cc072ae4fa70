"""mlm-train / `python -m pretrain`: --config FILE [section.key=value ...] -> train; `export ...` -> export.

Exit codes (docs/architecture.md): 0 done; 1 bad config or input (one line naming the culprit, before any
training step) or a run stopped by non-finite losses; 75 (EXIT_PREEMPTED) after a signal-triggered save.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pretrain.runtime.distributed import prepare_environment, strip_launcher_args


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mlm-train",
        description="Pretrain a BERT-style MLM with DeepSpeed ZeRO. Subcommand: `mlm-train export RUN OUT`.",
    )
    parser.add_argument(
        "--config", required=True, help="YAML config file (see configs/ and docs/training.md)"
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=100")
    return parser.parse_args(argv)


def _bad_input() -> tuple[type[BaseException], ...]:
    """The typed errors that mean bad config or input (exit 1 with `mlm-train: error: ...`). Any other
    exception is a bug and keeps its traceback (a ValueError at step 50,000 is not bad input)."""
    from data_pipeline.errors import DataError
    from pretrain.checkpoint.manager import CheckpointError
    from pretrain.config import ConfigError

    return (ConfigError, DataError, CheckpointError)


def _report(kind: str, exc: BaseException) -> None:
    """Print `mlm-train: KIND: EXC` to stderr in ONE write: every rank of a run shares the stream, and
    print's two writes (text, then newline) interleave under PYTHONUNBUFFERED into a doubled line."""
    sys.stderr.write(f"mlm-train: {kind}: {exc}\n")
    sys.stderr.flush()


def run_training(cfg, info, *, on_gpu: bool) -> int:
    """Train `cfg` on this rank (process group ready, see init_distributed); returns the exit code.

    Bad input, a file-system error (a full disk or an unwritable path while writing metrics or a
    checkpoint: data_pipeline.errors.is_file_system_error) and runs stopped by the health checks
    (non-finite losses, the fp16 loss-scale floor, a failed peer) become one line on stderr and exit
    code 1; anything else propagates with its traceback.
    """
    from data_pipeline.errors import is_file_system_error, os_error_line
    from pretrain.runtime.health import NonFiniteLossError, PeerFailedError
    from pretrain.trainer import train

    try:
        return train(cfg, info, on_gpu=on_gpu)
    except _bad_input() as exc:
        _report("error", exc)
        return 1
    except OSError as exc:
        if not is_file_system_error(exc):
            raise
        _report("error", os_error_line(exc, cfg.run_dir, "run_dir"))
        return 1
    except (NonFiniteLossError, PeerFailedError) as exc:
        _report("stopped", exc)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); returns the process exit code."""
    argv = strip_launcher_args(list(sys.argv[1:] if argv is None else argv))
    if argv and argv[0] == "export":
        from pretrain.checkpoint.export import main as export_main

        return export_main(argv[1:])
    args = _parse(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
    )
    on_gpu = prepare_environment()  # before anything imports deepspeed

    from pretrain.config import check_trainable, load_config
    from pretrain.runtime.collectives import shutdown
    from pretrain.runtime.distributed import init_distributed
    from pretrain.runtime.engine import deepspeed_config

    try:
        cfg = load_config(args.config, args.overrides)
        check_trainable(cfg, args.config)
        deepspeed_config(cfg, int(os.environ["WORLD_SIZE"]), on_gpu=on_gpu)  # refuse bad combos before init
        info = init_distributed(cfg.health.collective_timeout_minutes)
    except _bad_input() as exc:
        _report("error", exc)
        return 1
    try:
        return run_training(cfg, info, on_gpu=on_gpu)
    finally:
        shutdown()  # the group this call created


if __name__ == "__main__":
    sys.exit(main())
