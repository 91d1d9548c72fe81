"""The hostile tests reuse the integration tests' tiny regulator world (tests/integration/regulator_world.py)."""

from __future__ import annotations

import sys
from pathlib import Path

INTEGRATION = str(Path(__file__).resolve().parent.parent / "integration")
if INTEGRATION not in sys.path:
    sys.path.append(INTEGRATION)
