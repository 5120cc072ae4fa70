"""mlm-finetune's default input length: the model's own maximum, from its tokenizer or its position
embeddings (our exports' tokenizers set none), RoBERTa's padding offset included."""

from __future__ import annotations

import json

from pretrain.finetune.train import load_tokenizer, model_max_length


def test_the_default_length_is_the_models_maximum(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model_dir), "tiny")
    assert tokenizer.model_max_length > 10**9  # a trained WordPiece saved without one, as our exports
    assert model_max_length(str(tiny_model_dir), tokenizer) == 64  # max_position_embeddings

    roberta = tmp_path / "roberta"
    roberta.mkdir()
    config = {"model_type": "roberta", "max_position_embeddings": 66, "pad_token_id": 1, "vocab_size": 50}
    (roberta / "config.json").write_text(json.dumps(config))
    assert model_max_length(str(roberta), tokenizer) == 64  # positions start after the padding id

    tokenizer.model_max_length = 32  # a real checkpoint's tokenizer says how long it reads
    assert model_max_length(str(tiny_model_dir), tokenizer) == 32
