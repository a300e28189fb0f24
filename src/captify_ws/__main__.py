"""``python -m captify_ws serve …``."""

import sys

from captify_ws.cli import main

sys.exit(main())
