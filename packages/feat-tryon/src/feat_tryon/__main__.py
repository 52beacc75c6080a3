"""``python -m feat_tryon`` = the ``feat-tryon`` command."""

import sys

from feat_tryon.cli import main

sys.exit(main())
