"""`BuildConfig`: the settings of one `mlm-data build`, and the defaults its command line shows.

Kept apart from the pipeline so the CLI takes its defaults from here without importing the build.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_pipeline.ingest.clean import CleanConfig
from data_pipeline.ingest.input_files import DEFAULT_MAX_SKIPPED_FRACTION


@dataclass
class BuildConfig:
    """Everything `mlm-data build` takes (see `mlm-data build --help`)."""

    inputs: list[str]
    tokenizer: str
    out: str
    seq_len: int = 128
    mode: str = "full-sentences"
    workers: int = 1
    validation_fraction: float = 0.01
    seed: int = 0
    rows_per_shard: int = 100_000
    text_field: str = "text"
    one_per_line: bool = False
    clean: CleanConfig = field(default_factory=CleanConfig)
    num_partitions: int = 1
    partition_index: int = 0
    overwrite: bool = False
    extensions: dict[str, str] = field(default_factory=dict)  # --ext: more extensions -> format
    max_skipped_fraction: float = DEFAULT_MAX_SKIPPED_FRACTION  # of input bytes, unknown extensions
    accept_skipped: bool = False


DEFAULTS = BuildConfig(inputs=[], tokenizer="", out="")
"""A BuildConfig holding every default (the required fields empty): what the CLI offers as defaults."""
