"""What the tests share: the repository's paths, the services as processes, worlds of seeded figures, the fault
kit and the oracle (a second read of every figure)."""

from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]
# The three editions of the national registry beside the repository (../shared/data): tests and development only.
SHARED_DATA: Final = REPO.parent / "shared" / "data"
