"""``python -m batchworks``: the same as the ``batchworks`` command."""

from __future__ import annotations

import sys

from batchworks.cli import main

sys.exit(main())
