"""`python -m mesh` is the `memmesh` command."""

import sys

from mesh.cli import main

sys.exit(main())
