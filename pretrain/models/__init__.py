"""Model architectures. Each lives in its own folder (`bert/`: its config section and its model) and is
listed once in `registry.py`."""
