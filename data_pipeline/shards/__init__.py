"""Shards: THE Arrow schema, the writer and the reader (`format.py`), the manifest and what it must hold,
`mlm-data verify` and `mlm-data inspect`. A new storage backend goes beside `format.py`.

`from data_pipeline.shards import ShardReader` is the import path users know; it stays.
"""

from data_pipeline.shards.format import ShardReader, ShardWriter, shard_schema

__all__ = ["ShardReader", "ShardWriter", "shard_schema"]
