"""BERT (and RoBERTa-style full-sentence MLM on the BERT architecture): the `transformers` BERT encoder
with a sparse MLM head and an optional NSP/SOP head."""
