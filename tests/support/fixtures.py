"""Where the forges' official webhook payload examples are (see their README, with their sources and
licences): ``tests/fixtures`` in this repository, or ``REVIEWBOT_TEST_FIXTURES``."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
FIXTURES = Path(os.environ.get("REVIEWBOT_TEST_FIXTURES") or ROOT / "tests" / "fixtures")
