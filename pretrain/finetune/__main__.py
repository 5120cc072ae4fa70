"""`python -m pretrain.finetune`: the same as `mlm-finetune`."""

import sys

from pretrain.finetune.cli import main

sys.exit(main())
