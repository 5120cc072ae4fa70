"""`mlm-finetune`: downstream fine-tuning of an export, an HF model dir or a run dir with the
`transformers` classes users know (never the pretraining loop). A new task goes here, beside `train.py`."""
