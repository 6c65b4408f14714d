"""``python -m fedpet.cli``: the ``fedpet`` command."""

import sys

from fedpet.cli import main

sys.exit(main())
