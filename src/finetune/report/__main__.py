"""`python -m finetune.report <sweep dirs> [--paper gpt1] [--out DIR]` (see finetune.report)."""

import sys

from finetune.report.render import main

sys.exit(main())
