"""``python -m sftmask`` runs the command line."""

import sys

from sftmask.cli import main

if __name__ == "__main__":
    sys.exit(main())
