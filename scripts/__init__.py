"""Drivers that use several packages through their command lines (not installed; run from a checkout)."""
