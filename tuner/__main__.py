"""``python -m tuner``: the command line, as the ``tuner`` script."""

import sys

from tuner.cli import main

sys.exit(main())
