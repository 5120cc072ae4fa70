"""Building shards: work units -> worker processes (clean, tokenize) -> packing into fixed-length rows
(full sentences, NSP, SOP) -> shards and manifest; partition merge. A new packing mode goes in
`packing.py`."""
