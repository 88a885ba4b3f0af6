"""``python -m powercast``."""

import sys

from powercast.cli import main

sys.exit(main())
