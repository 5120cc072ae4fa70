"""debug.data_error_steps fails the first read of exactly its step, also when the number of
micro-batches per step varies (batch warmup)."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipeline.errors import DataError
from pretrain.config import DebugConfig
from pretrain.runtime.faults import Faults
from tests.helpers.rows import ArrayReader


def test_the_failing_read_is_the_first_of_its_step_under_a_batch_ramp(pair_rows):
    faults = Faults.for_rank(DebugConfig(data_error_steps=[4]), 0)
    micro = {3: 2}  # step 3 (1-based) reads 2 micro-batches, the later steps 3 each
    reader = faults.reader(ArrayReader(pair_rows), micro_batches_at=lambda s: micro.get(s, 3), first_step=3)
    reader.take(np.arange(2))  # step 3's two reads
    reader.take(np.arange(2))
    with pytest.raises(DataError, match="could not read the data of step 4"):
        reader.take(np.arange(2))  # step 4's first
    reader.take(np.arange(2))  # its other reads go through
