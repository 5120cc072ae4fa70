"""model.compile: per-layer torch.compile (inductor, on this CPU with the reference SDPA path) trains to the
eager losses. One layer keeps the compile to one forward and one backward graph: compiling is most of
this test's time (about a minute on a loaded 2-core machine), the steps themselves take milliseconds."""

from __future__ import annotations

import numpy as np
import torch

from pretrain.data.documents import document_inputs
from pretrain.models.modernbert.config import ModernBertModelConfig
from pretrain.models.modernbert.model import build_model

VOCAB, ROWS, SEQ, STEPS = 300, 4, 48, 3
# fp32 on CPU: inductor fuses and reorders the same arithmetic, so the losses agree to rounding.
LOSS_RTOL = 1e-5


def packed_batches(seed: int = 1):
    """STEPS micro-batches of rows packing documents of random lengths (one row padded), 30% masked."""
    g = np.random.default_rng(seed)
    for _ in range(STEPS):
        ids = torch.from_numpy(g.integers(5, VOCAB, (ROWS, SEQ)))
        lengths = np.array([SEQ, SEQ, SEQ, SEQ - 11])
        keys = {
            k: torch.from_numpy(v) for k, v in document_inputs(g.random((ROWS, SEQ)) < 0.06, lengths).items()
        }
        masked = keys["unpad_indices"][torch.from_numpy(g.random(len(keys["unpad_indices"])) < 0.3)]
        yield {"input_ids": ids, "masked_positions": masked, "masked_labels": ids.view(-1)[masked], **keys}


def losses(compile_mode: bool) -> list[float]:
    torch.manual_seed(0)
    cfg = ModernBertModelConfig(preset="tiny", num_layers=1, compile=compile_mode)
    model = build_model(cfg, vocab_size=VOCAB, pad_id=0, rows_have_pairs=False).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = []
    for batch in packed_batches():
        result = model(**batch)
        loss = result.mlm_loss_sum / result.num_masked
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        out.append(loss.item())
    return out


def test_compiled_layers_train_to_the_eager_losses():
    eager, compiled = losses(False), losses(True)
    np.testing.assert_allclose(compiled, eager, rtol=LOSS_RTOL)
    assert eager[-1] < eager[0]  # the steps do train: equal losses are not equal constants


def test_auto_compiles_on_cuda_only():
    model = build_model(
        ModernBertModelConfig(preset="tiny"), vocab_size=VOCAB, pad_id=0, rows_have_pairs=False
    )
    compiled = [layer._compiled_call_impl is not None for layer in model.model.layers]
    assert compiled == [torch.cuda.is_available()] * len(compiled)
    forced = build_model(
        ModernBertModelConfig(preset="tiny", compile=True), vocab_size=VOCAB, pad_id=0, rows_have_pairs=False
    )
    assert all(layer._compiled_call_impl is not None for layer in forced.model.layers)
    assert set(forced.state_dict()) == set(model.state_dict())  # names unchanged: checkpoints and export
