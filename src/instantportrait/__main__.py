"""Command-line entry: python -m instantportrait."""

import sys

from .cli import main

sys.exit(main())
