"""``python -m hvae.cli``: the ``hvae`` command."""

import sys

from hvae.cli import main

sys.exit(main())
