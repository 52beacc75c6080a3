"""``python -m t5_linearize`` = the ``t5-linearize`` command."""

import sys

from t5_linearize.cli import main

sys.exit(main())
