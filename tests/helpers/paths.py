"""Paths of the checkout the tests run from, and of the fixtures they share."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Chinese text from Debian's translated manual pages (a real corpus that needs word segmentation).
ZH_FIXTURE = REPO / "tests" / "data_pipeline" / "fixtures" / "zh_manpages.txt"
