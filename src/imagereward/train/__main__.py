"""``python -m imagereward.train`` (also ``torchrun -m imagereward.train``)."""

import sys

from .cli import main

sys.exit(main())
