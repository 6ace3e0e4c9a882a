"""``python -m fatlib.book ...``, the same as ``python -m fatlib book ...``."""

import sys

from fatlib.book.cli import main

sys.exit(main())
