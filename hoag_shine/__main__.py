"""``python -m hoag_shine``: see :mod:`hoag_shine.cli`."""

import sys

from .cli import main

sys.exit(main())
