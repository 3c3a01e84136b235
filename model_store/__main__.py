"""`python -m model_store`: the store CLI (see model_store/store/cli.py)."""

import sys

from .store.cli import main

sys.exit(main())
