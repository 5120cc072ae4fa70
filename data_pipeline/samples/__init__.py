"""Offline sample data from text every machine has (the Python standard library): a pretraining corpus
and a labelled downstream task."""
