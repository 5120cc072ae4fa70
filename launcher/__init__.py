"""Launch pretrain locally, across nodes with the deepspeed launcher, or as SLURM jobs."""
