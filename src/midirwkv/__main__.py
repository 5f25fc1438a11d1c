"""``python -m midirwkv``: the same as the ``midirwkv`` command."""

import sys

from midirwkv.cli import main

sys.exit(main())
