"""``python -m diffviz ...`` (as ``torchrun -m diffviz batch ...`` starts it): the ``diffviz`` command."""

import sys

from diffviz.cli import main

sys.exit(main())
