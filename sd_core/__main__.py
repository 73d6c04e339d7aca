"""Entry point for ``python -m sd_core``."""

import sys

from sd_core.cli import main

sys.exit(main())
