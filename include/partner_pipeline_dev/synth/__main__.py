"""`python -m partner_pipeline_dev.synth --out DIR --date D --profiles N --rows N [...]` (see cli.py)."""

import sys

from partner_pipeline_dev.synth.cli import main

sys.exit(main())
