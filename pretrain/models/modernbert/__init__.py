"""ModernBERT (`model.arch: modernbert`): its `model` config section (config.py) and its model (model.py)."""
