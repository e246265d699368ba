"""``python -m mas``: see ``mas.cli``."""

from mas.cli import main

raise SystemExit(main())
