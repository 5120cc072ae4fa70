"""DeepSpeed ZeRO trainer for BERT-style masked-language-model pretraining."""

# The log line of the single-process tools: `mlm-train export`, `mlm-finetune` and its --jobs workers.
TOOL_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
