"""Checkpoints: the manager (save, validate, keep, resume), our own files and completion record, the run
identity a resume checks, weights-only loading, consolidation to fp32, elastic resume and export to a
Hugging Face model dir."""
