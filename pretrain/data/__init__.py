"""Training data on the trainer's side: the row sources it reads, the sample order (sampler), the
prefetching loaders and the masking collator. A new masking rule goes in `masking.py`; a new kind of
row source (a mixture, another storage) is one class of `row_source.RowSource`."""
