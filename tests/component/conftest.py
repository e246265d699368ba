"""Component tests: Trio, in memory or against local services; no network beyond loopback."""

from __future__ import annotations

import sys
from pathlib import Path

# The store contract module is imported by each backend's test module.
sys.path.insert(0, str(Path(__file__).parent))
