"""``python -m mas``: see ``mas.cli``."""

from mas.cli import console

raise SystemExit(console())
