"""Benchmarks against peers, each printing both sides and the ratio measured in one run (see docs/).

Shared pieces: `bench.harness` (run `python -m pretrain` and the Hugging Face recipe as processes and
read what each measured), `bench.hf_mlm` (the HF recipe itself), `bench.inputs` (shards built with the
real `mlm-data` CLI).
"""
