"""``python -m specedit`` — the same CLI as the ``specedit`` entry point."""

from specedit.cli import main

raise SystemExit(main())
