"""`python -m rsdpo ...` is the `rsdpo` command (rsdpo/console.py)."""

import sys

from rsdpo.console import main

if __name__ == "__main__":
    sys.exit(main())
