"""``python -m style_attr`` = the ``style-attr`` command."""

import sys

from style_attr.cli import main

sys.exit(main())
