"""`python -m quantops ...` is the `quantops` command."""

import sys

from .cli import main

sys.exit(main())
