"""``mas check [CONFIG]``: everything ``mas run`` would refuse, without starting anything.

The checks are ``mas.runtime.preflight``, the ones a start makes: warnings are
printed, and every error is reported (as ``mas.cli.exits`` says, status 2).
"""

from __future__ import annotations

import argparse
import sys

from ..config import load_config
from ..runtime import preflight
from .exits import EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Run the checks ``mas run`` makes before it starts, and report every problem."""
    loaded = load_config(args.config)
    config = loaded.config
    report = preflight(loaded, server=True, agents=config.agents)
    for warning in report.warnings:
        print(f"mas: warning: {warning}", file=sys.stderr)
    if report.errors:
        report.raise_errors()
    print(
        f"{loaded.path}: OK ({len(config.agents)} agent(s), "
        f"{len(config.permissions)} permission rule(s))"
    )
    return EXIT_OK
