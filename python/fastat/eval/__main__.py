"""``python -m fastat.eval CHECKPOINT [options]`` — the same as ``fastat eval``."""

import sys

from .cli import main

sys.exit(main())
