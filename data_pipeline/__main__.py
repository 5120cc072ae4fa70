"""`python -m data_pipeline ...` is `mlm-data ...`."""

import sys

from data_pipeline.cli import main

sys.exit(main())
