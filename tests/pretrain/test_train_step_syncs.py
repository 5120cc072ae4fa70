"""Device-to-host fetches per optimizer step through the real `train_step`, counted by patching the
calls that would block the host on a GPU (Tensor.item / tolist / cpu / numpy, a tensor's bool, float,
int or index, and the accelerator's synchronize), each attributed to the first caller outside torch:
ours (pretrain/) or DeepSpeed's. The step itself is not mocked: a tiny BERT in a real DeepSpeed engine
(gloo, world of one) built from our generated config.

ModernBERT is counted too, on packed rows with their document keys (pretrain/data/documents.py): its
forward reads nothing back either, padded rows or not (the masked counts come from the CPU batch).

The design (docs/training.md): `train_step` fetches nothing of ours (the end of the step fetches once,
after the agreement: `to_host`), except Stage0StepGuard's gradient norm under ZeRO-0 fp32; DeepSpeed's
own overflow checks and norms add the numbers of `deepspeed_fetches` per optimizer step.
"""

from __future__ import annotations

import collections
import os
import sys

import numpy as np
import pytest
import torch

from pretrain.config import MaskingConfig, config_from_dict
from pretrain.data.loader import LoaderStep, step_counts
from pretrain.data.masking import MaskingCollator
from pretrain.models.registry import build_model
from pretrain.runtime.collectives import Collectives
from pretrain.runtime.health import Stage0StepGuard
from pretrain.trainer import train_step
from tests.helpers.engine import init_process_group
from tests.helpers.paths import REPO
from tests.helpers.rows import SPECIAL_IDS, VOCAB_SIZE, make_rows

ACCUM = 2
TORCH_DIR = os.path.dirname(torch.__file__)
_NORM_CHECK = "deepspeed/runtime/utils.py:233"  # is_invalid_grad_norm: bool() of a device tensor
_ZERO_12 = {_NORM_CHECK: 3}  # the overflow check, the clip norm and the global norm of stage_1_and_2


def deepspeed_fetches(stage: int, precision: str, num_params: int) -> dict[str, int]:
    """DeepSpeed 0.19's host fetches per optimizer step on CPU, by call site (docs/training.md)."""
    if stage == 0:
        if precision == "fp32":
            return {}  # the plain torch optimizer; our Stage0StepGuard checks the norm (one fetch of ours)
        # bf16 under ZeRO-0 is FP16_UnfusedOptimizer: an overflow check per parameter, then the norms.
        return {
            "deepspeed/runtime/utils.py:293": num_params,
            "deepspeed/runtime/utils.py:323": 1,
            "deepspeed/runtime/utils.py:582": 2,
            "deepspeed/runtime/utils.py:585": 2,
        }
    if stage in (1, 2):
        # bf16 adds check_grad_overflow's one .item() of the all-reduced flag (stage_1_and_2.py has_overflow).
        return (
            {**_ZERO_12, "deepspeed/runtime/zero/stage_1_and_2.py:3248": 1}
            if precision == "bf16"
            else _ZERO_12
        )
    return {_NORM_CHECK: 1}


def _owner() -> str:
    """Who asked: the file (and line, for DeepSpeed) of the frame that called the patched method."""
    frame = sys._getframe(2)
    name = frame.f_code.co_filename
    if name.startswith(TORCH_DIR):
        return "torch/" + os.path.relpath(name, TORCH_DIR)
    if "/deepspeed/" in name:
        return "deepspeed/" + name.split("/deepspeed/")[-1] + f":{frame.f_lineno}"
    if "/transformers/" in name:
        return "transformers"
    if name.startswith(str(REPO / "pretrain")):
        return "ours"
    return "other:" + name


class FetchCounter:
    """Counts host fetches by owner while active (patches torch.Tensor and the accelerator)."""

    METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch) -> None:
        from deepspeed.accelerator import get_accelerator

        self.counts: collections.Counter = collections.Counter()
        self.active = False
        for name in self.METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))
        accelerator = get_accelerator()
        monkeypatch.setattr(accelerator, "synchronize", self._wrap("synchronize", accelerator.synchronize))

    def _wrap(self, name, original):
        counter = self

        def counted(*args, **kwargs):
            if counter.active:
                counter.counts[_owner()] += 1
            return original(*args, **kwargs)

        return counted


def _step_data(collator, rows, step: int) -> LoaderStep:
    idx = np.arange(step * 8, step * 8 + 8) % len(rows["length"])
    batches = []
    for part in np.split(idx, ACCUM):
        part_rows = {k: v[part] for k, v in rows.items()}
        batch = collator.collate(part_rows, part, 0)
        batches.append(batch)
    return LoaderStep(0, idx, idx, batches, step_counts(batches), {})


def _fetches_per_step(
    monkeypatch, stage: int, precision: str, *, padded: bool, arch: str = "bert", isolation: bool = False
) -> tuple[list, int]:
    """The fetches of train_step's 2nd and 3rd optimizer steps (the first may initialise lazily) of the tiny
    model of `arch`, each a Counter by owner; and the model's number of parameters. `isolation`: with
    model.document_isolation on rows of packed documents."""
    from pretrain.runtime.engine import initialize_engine

    init_process_group()
    cfg = config_from_dict(
        {
            "run_dir": "/tmp/unused",
            "data": {"path": "/tmp/unused"},
            "model": {"arch": arch, "preset": "tiny"}
            | ({"compile": False} if arch == "modernbert" else {"document_isolation": isolation}),
            "precision": precision,
            "zero": {"stage": stage},
            "train": {"micro_batch_size": 8 // ACCUM, "grad_accum_steps": ACCUM, "max_steps": 10},
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=VOCAB_SIZE, pad_id=0, rows_have_pairs=False)
    num_params = len(list(model.parameters()))
    engine = initialize_engine(cfg, model, 1, on_gpu=False)
    guard = Stage0StepGuard(engine.optimizer) if stage == 0 and precision == "fp32" else None
    rows = make_rows(64, 32, seed=3, documents=isolation or arch == "modernbert")
    seq_len = None if padded else int(rows["length"].min())  # truncated to the shortest row: no padding
    collator = MaskingCollator(
        MaskingConfig(),
        special_ids=SPECIAL_IDS,
        vocab_size=VOCAB_SIZE,
        seed=1,
        seq_len=seq_len,
        batch_keys=model.batch_keys,
    )
    comm = Collectives("cpu")
    counter = FetchCounter(monkeypatch)
    per_step = []
    for step in range(3):
        data = _step_data(collator, rows, step)
        if arch != "modernbert":  # ModernBERT takes the document keys, never a padding mask
            assert all(("attention_mask" in b) == (padded and not isolation) for b in data.micro_batches)
        counter.counts.clear()
        counter.active = True
        train_step(engine, data, comm, guard=guard)
        counter.active = False
        per_step.append(collections.Counter(counter.counts))
    return per_step[1:], num_params


def _split(counts: collections.Counter) -> tuple[dict, dict, dict]:
    """(DeepSpeed's by site, torch's own, the rest by owner)."""
    deepspeed = {k: v for k, v in counts.items() if k.startswith("deepspeed/")}
    torch_own = {k: v for k, v in counts.items() if k.startswith("torch/")}
    rest = {k: v for k, v in counts.items() if k not in deepspeed and k not in torch_own}
    return deepspeed, torch_own, rest


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_train_step_fetches_only_what_the_design_says(monkeypatch, stage, precision):
    steps, num_params = _fetches_per_step(monkeypatch, stage, precision, padded=False)
    ours = {"ours": 1} if (stage, precision) == (0, "fp32") else {}  # Stage0StepGuard.check's float(norm)
    for counts in steps:
        deepspeed, torch_own, rest = _split(counts)
        assert rest == ours, counts  # nothing of transformers: an unpadded batch has no mask to check
        assert deepspeed == deepspeed_fetches(stage, precision, num_params), counts
        # torch's own are the CPU step counters of torch.optim's non-fused AdamW (.item() of a CPU tensor;
        # on GPU AdamW is fused): not device fetches.
        assert all(k.startswith("torch/optim/") for k in torch_own), counts


def test_a_padded_batch_costs_one_host_check_of_its_mask_per_micro_batch(monkeypatch):
    steps, _ = _fetches_per_step(monkeypatch, 3, "fp32", padded=True)
    for counts in steps:
        assert _split(counts)[2] == {"transformers": ACCUM}, counts  # masking_utils: padding_mask.all()


def test_document_isolation_fetches_nothing_even_on_padded_rows(monkeypatch):
    # The document mask is built on the device from the batch's document ids and handed to transformers
    # as 4-D: nothing is asked of the host, unlike the padding mask's `all()` check.
    steps, _ = _fetches_per_step(monkeypatch, 3, "fp32", padded=True, isolation=True)
    for counts in steps:
        assert _split(counts)[2] == {}, counts


def test_roberta_fetches_what_bert_does(monkeypatch):
    """RoBERTa numbers its positions on the device (cumsum over the non-pad ids): no fetch of its own."""
    steps, num_params = _fetches_per_step(monkeypatch, 1, "bf16", padded=False, arch="roberta")
    for counts in steps:
        deepspeed, _, rest = _split(counts)
        assert rest == {} and deepspeed == deepspeed_fetches(1, "bf16", num_params), counts


@pytest.mark.parametrize(("stage", "precision", "padded"), [(2, "bf16", True), (0, "fp32", False)])
def test_modernbert_fetches_nothing_of_its_own_on_packed_rows(monkeypatch, stage, precision, padded):
    steps, num_params = _fetches_per_step(monkeypatch, stage, precision, padded=padded, arch="modernbert")
    ours = {"ours": 1} if (stage, precision) == (0, "fp32") else {}  # Stage0StepGuard, as for BERT
    for counts in steps:
        deepspeed, torch_own, rest = _split(counts)
        assert rest == ours, counts  # no mask check, no count read back: documents come from the CPU
        assert deepspeed == deepspeed_fetches(stage, precision, num_params), counts
        assert all(k.startswith("torch/optim/") for k in torch_own), counts
