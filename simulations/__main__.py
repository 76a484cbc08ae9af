"""`python -m simulations SCENARIO ...`: the same as `memmesh sim SCENARIO ...`."""

from __future__ import annotations

import sys

from simulations.cli import main

if __name__ == "__main__":
    sys.exit(main())
