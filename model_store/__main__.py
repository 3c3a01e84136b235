"""`python -m model_store`: the store CLI (see model_store/cli.py)."""

import sys

from .cli import main

sys.exit(main())
