"""RoBERTa: BERT's encoder with RoBERTa's positions (after the pad id), one token type and no pair head,
exported as `RobertaForMaskedLM`."""
