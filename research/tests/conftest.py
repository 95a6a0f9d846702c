"""research/ holds scripts, not a package: put it on sys.path so that tests can import a script's helpers
(``import binding_oracle``) the way the scripts import each other."""

from __future__ import annotations

import sys
from pathlib import Path

RESEARCH = Path(__file__).resolve().parents[1]
if str(RESEARCH) not in sys.path:
    sys.path.insert(0, str(RESEARCH))
