"""Started by the launcher in place of pretrain (two ranks): both join a gloo group, write their pid and
wait. Rank 0 then ignores SIGTERM, as a rank blocked in an NCCL collective with a dead peer does not act
on it for minutes; the test kills rank 1 with SIGKILL."""

import os
import signal
import sys
import time

import torch.distributed as dist

dist.init_process_group("gloo")
rank = dist.get_rank()
dist.barrier()
if rank == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(os.path.join(sys.argv[1], f"pid{rank}.tmp"), "w") as f:
    f.write(str(os.getpid()))
os.replace(os.path.join(sys.argv[1], f"pid{rank}.tmp"), os.path.join(sys.argv[1], f"pid{rank}"))
while True:
    time.sleep(1)
