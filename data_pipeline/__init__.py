"""Offline data pipeline: raw corpora -> tokenizer -> packed, verified Arrow shards."""
