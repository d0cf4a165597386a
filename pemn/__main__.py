"""Entry point of ``python -m pemn``."""

import sys

from pemn.cli import main

if __name__ == "__main__":
    sys.exit(main())
