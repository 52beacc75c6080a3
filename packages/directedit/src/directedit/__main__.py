"""``python -m directedit``: the same command line as the ``directedit`` entry point."""

from directedit.cli import main

raise SystemExit(main())
