"""A two-process gloo all-reduce started by the launcher in place of pretrain: it checks the env:// variables
the launcher sets (the same ones the trainer's init_distributed reads) really form one process group."""

import os
import sys

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank = dist.get_rank()
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
with open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}.txt"), "w") as f:
    f.write(f"{dist.get_world_size()} {value.item()}")
dist.destroy_process_group()
sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 and rank == 0 else 0)
