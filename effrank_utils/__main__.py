"""``python -m effrank_utils``: the same as the ``effrank`` command."""

import sys

from .cli import main

sys.exit(main())
