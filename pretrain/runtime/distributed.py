"""Process-group setup: one process (world 1), `torchrun -m pretrain` or `deepspeed --module pretrain`.

`prepare_environment()` must run before `deepspeed` is imported: DeepSpeed picks its accelerator at
import time, and on a machine without CUDA it has to be told `DS_ACCELERATOR=cpu` (gloo backend).

On GPU the process group is created with two backends, `cuda:nccl,cpu:gloo` (as torchtitan does): NCCL for
CUDA tensors, gloo for any CPU tensor, so a CPU tensor in a collective cannot crash a run. Multi-node runs
then need gloo to find the right network interface too: set `GLOO_SOCKET_IFNAME` (like
`NCCL_SOCKET_IFNAME`) when the nodes have several.

`MLM_TEST_CPU_FP16=1` is a TEST DEVICE, never a default and not for real training: on a machine without
CUDA it makes DeepSpeed's CPU accelerator report fp16 support, so DeepSpeed's own fp16 optimizers and
dynamic loss scaling (device-agnostic Python over torch ops) run on CPU in the tests.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

_CPU_SHM_COMM_OP = "deepspeed_shm_comm"  # ShareMemCommBuilder.NAME
# The variables a launcher (torchrun, deepspeed, MPI) sets that make a process join a process group, the
# MPI world sizes included because accelerate (inside the HF Trainer) reads them too. A child that must be
# a world of one on its own gets an environment without them.
LAUNCHER_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "PMI_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "MV2_COMM_WORLD_SIZE",
)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, local rank, the torch device and the comm backend."""

    rank: int
    world_size: int
    local_rank: int
    device: str
    backend: str

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one that writes config, metrics and logs."""
        return self.rank == 0


def free_port() -> int:
    """A local TCP port that is free now, for a rendezvous on 127.0.0.1 (world-1 runs, the demo's
    torchrun, tests). The port is released before it is returned, so another process could take it
    in between: good enough on one machine, no substitute for a port the user chose."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CPU_FP16_TEST_ENV = "MLM_TEST_CPU_FP16"
"""Environment variable of the CPU fp16 test device (tests only; see the module docstring)."""


def cpu_fp16_test_device() -> bool:
    """True when the CPU fp16 test device is switched on (MLM_TEST_CPU_FP16=1) and there is no GPU."""
    import torch

    return os.environ.get(CPU_FP16_TEST_ENV) == "1" and not torch.cuda.is_available()


def enable_cpu_fp16_test_device() -> Callable[[], None]:
    """Switch the CPU fp16 test device on in this process (TESTS ONLY; what MLM_TEST_CPU_FP16=1 does for
    a trainer process): sets the variable and makes DeepSpeed's CPU accelerator report fp16 support.

    Returns a function that undoes both. Import deepspeed only after DS_ACCELERATOR is chosen.
    """
    # DeepSpeed refuses fp16 where the accelerator says it has none (engine._do_sanity_check); its CPU
    # accelerator asks oneDNN, which says no on most CPUs although every op fp16 training needs runs there.
    from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

    previous_method, previous_env = CPU_Accelerator.is_fp16_supported, os.environ.get(CPU_FP16_TEST_ENV)
    os.environ[CPU_FP16_TEST_ENV] = "1"
    CPU_Accelerator.is_fp16_supported = lambda self: True

    def undo() -> None:
        CPU_Accelerator.is_fp16_supported = previous_method
        if previous_env is None:
            os.environ.pop(CPU_FP16_TEST_ENV, None)
        else:
            os.environ[CPU_FP16_TEST_ENV] = previous_env

    return undo


def process_group_backend(on_gpu: bool) -> str:
    """The torch.distributed backend string: 'cuda:nccl,cpu:gloo' on GPU, 'gloo' on CPU."""
    return "cuda:nccl,cpu:gloo" if on_gpu else "gloo"


def set_determinism(enabled: bool) -> None:
    """With `enabled` (train.deterministic): deterministic torch kernels, cuBLAS and attention.

    Sets CUBLAS_WORKSPACE_CONFIG (read when cuBLAS starts: call this before the first CUDA matmul),
    turns on torch.use_deterministic_algorithms (an op without a deterministic kernel then raises,
    naming itself), cuDNN's deterministic mode, and leaves SDPA the flash, memory-efficient and math
    kernels, whose backward passes honour that mode (cuDNN attention is switched off). Does nothing when
    not `enabled`.
    """
    if not enabled:
        return
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.enable_cudnn_sdp(False)


# Set for GPU ranks (a launcher's value wins): a failed or timed-out NCCL collective tears the process
# down (1 = TearDown: abort the communicators, then end the process) instead of leaving it blocked, so a
# dead peer ends the job. TORCH_NCCL_* is the current name, NCCL_* the one older torch reads.
NCCL_ERROR_HANDLING = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "NCCL_ASYNC_ERROR_HANDLING": "1"}


def set_nccl_error_handling(env: dict | None = None) -> None:
    """Put NCCL_ERROR_HANDLING into `env` (default os.environ) where not already set."""
    env = os.environ if env is None else env
    for key, value in NCCL_ERROR_HANDLING.items():
        env.setdefault(key, value)


def allow_tf32() -> None:
    """Let fp32 matmuls and convolutions use TF32 tensor cores (CUDA only: these flags change nothing on
    CPU). Under precision=fp32 on GPU that is several times the fp32 matmul rate (tensor cores) for
    10 mantissa bits per product (accumulation stays fp32), as the HF peer of bench/gpu.py runs;
    bf16/fp16 matmuls are unaffected."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def loopback_hostname_problem(
    world_size: int,
    local_world_size: int,
    env: dict | None = None,
    resolve: Callable[[str], str] | None = None,
    hostname: str | None = None,
) -> str | None:
    """The one line to print when gloo (the `cpu:gloo` half of the GPU process group) would fail across
    nodes: a multi-node world (`world_size` > `local_world_size`), GLOO_SOCKET_IFNAME unset, and this
    host's name resolving to a loopback address (Debian/Ubuntu map it to 127.0.1.1 in /etc/hosts), which
    gloo then advertises to the other nodes. None when there is nothing to say. `env`, `resolve` (name
    -> IPv4 address) and `hostname` default to os.environ, socket.gethostbyname and socket.gethostname.
    """
    env = os.environ if env is None else env
    if world_size <= local_world_size or env.get("GLOO_SOCKET_IFNAME"):
        return None
    name = hostname if hostname is not None else socket.gethostname()
    try:
        address = (resolve or socket.gethostbyname)(name)
    except OSError:
        return None  # gloo's own error will name the host
    if not address.startswith("127."):
        return None
    nccl = env.get("NCCL_SOCKET_IFNAME")
    example = (
        f"GLOO_SOCKET_IFNAME={nccl}"
        if nccl
        else "GLOO_SOCKET_IFNAME=<interface the nodes reach each other on, e.g. eth0>"
    )
    return (
        f"this host's name {name!r} resolves to {address} (loopback), so gloo would tell the other nodes to "
        f"reach it there; set {example} on every node"
    )


def prepare_environment() -> bool:
    """Set the environment DeepSpeed and torch.distributed read; returns True when CUDA is used.

    Without CUDA, sets DS_ACCELERATOR=cpu (unless the user chose one) and, with the CPU fp16 test
    device switched on (MLM_TEST_CPU_FP16=1), lets DeepSpeed run fp16 there. Without a launcher (no RANK
    / WORLD_SIZE in the environment), fills in a world of one on 127.0.0.1 with a free port, so a plain
    `python -m pretrain` works. With CUDA, sets NCCL's async error handling (`set_nccl_error_handling`)
    unless the launcher did. Call it before importing deepspeed.
    """
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if cpu_fp16_test_device():
            enable_cpu_fp16_test_device()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("LOCAL_RANK", "0")
    on_gpu = on_gpu and os.environ.get("DS_ACCELERATOR", "cuda") == "cuda"
    if on_gpu:
        set_nccl_error_handling()  # read when the NCCL process group is created
    return on_gpu


def init_distributed(timeout_minutes: float) -> DistInfo:
    """Create the process group (see `process_group_backend`) and return this process's DistInfo.

    Takes the collective timeout in minutes (a hung peer ends the job instead of hanging forever). On GPU
    it also allows TF32 (`allow_tf32`) and warns, in one line, when gloo would fail across nodes
    (`loopback_hostname_problem`).
    Raises RuntimeError when the launcher's environment is inconsistent (e.g. RANK >= WORLD_SIZE).
    """
    on_gpu = prepare_environment()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if not 0 <= rank < world:
        raise RuntimeError(f"RANK={rank} is not in [0, WORLD_SIZE={world}); check the launcher's environment")
    import deepspeed
    import torch

    from pretrain.runtime.health import collective_timeout

    backend = process_group_backend(on_gpu)
    if on_gpu:
        torch.cuda.set_device(local_rank)
        allow_tf32()
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        problem = loopback_hostname_problem(world, local_world)
        if problem is not None and local_rank == 0:
            log.warning("%s", problem)
    else:
        skip_cpu_inference_comm_op()
    deepspeed.init_distributed(
        dist_backend=backend,
        timeout=collective_timeout(timeout_minutes),
        verbose=False,
        auto_mpi_discovery=False,
    )
    device = f"cuda:{local_rank}" if on_gpu else "cpu"
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)


def skip_cpu_inference_comm_op() -> None:
    """Keep DeepSpeed's CPU comm start-up from JIT-compiling its shared-memory all-reduce op.

    That op serves only `inference_all_reduce` (tensor-parallel inference); training collectives go
    through torch.distributed (gloo). Compiling it cost about 47 s of every first CPU run per venv (the
    two ranks wait on one build lock), a sixth of `make demo`. DeepSpeed skips an op its compatibility
    table marks False, and keeps that table as one module-level dict so that edits persist.
    """
    import deepspeed.ops

    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict):
        compatible[_CPU_SHM_COMM_OP] = False


def strip_launcher_args(argv: list[str]) -> list[str]:
    """Drop the `--local_rank=N` the deepspeed launcher appends (LOCAL_RANK is in the environment)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--local_rank", "--local-rank"):
            skip = True
            continue
        if arg.startswith(("--local_rank=", "--local-rank=")):
            continue
        out.append(arg)
    return out
