"""Tokenizers: loading ours or any Hugging Face tokenizer dir (`load.py`, `hf_dir.py`), training WordPiece
or SentencePiece (`training.py`), and word segmentation of unspaced scripts for whole-word masking
(`segment.py`)."""
