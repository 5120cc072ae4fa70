"""Reading raw corpora: files, directories and globs -> source files -> documents (formats, compression,
work-unit blocks of big files, the is-this-text checks, cleaning) and the counts of what was dropped or
repaired. A new input format goes in `sources.py`."""
