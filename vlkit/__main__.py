"""``python -m vlkit`` (used by ``torchrun -m vlkit``)."""

import sys

from vlkit.cli import main

sys.exit(main())
