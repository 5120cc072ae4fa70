"""DeepSpeed ZeRO trainer for BERT-style masked-language-model pretraining."""
