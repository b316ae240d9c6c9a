"""``python -m crossrank``: the command line (front wing entry point)."""

import sys

from crossrank.front.cli import main

sys.exit(main())
