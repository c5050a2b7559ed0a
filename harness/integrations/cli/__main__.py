"""``python -m harness.integrations.cli``: the same as ``powersteer``."""

from harness.integrations.cli import main

raise SystemExit(main())
