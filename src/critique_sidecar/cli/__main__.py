"""`python -m critique_sidecar.cli ...`, as the console script."""

import sys

from .run import main

sys.exit(main())
