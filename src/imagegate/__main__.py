"""``python -m imagegate``: the same as the ``imagegate`` command."""

import sys

from imagegate.cli import main

sys.exit(main())
