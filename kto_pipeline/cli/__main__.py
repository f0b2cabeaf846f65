"""`python -m kto_pipeline.cli …` = `kto …` (where the console script is not on PATH)."""

import sys

from kto_pipeline.cli import main

sys.exit(main())
