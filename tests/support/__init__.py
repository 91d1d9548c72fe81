"""What the tests share: the repository's paths, the services as processes, worlds of seeded figures, the fault
kit and the oracle (a second read of every figure)."""

from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]
