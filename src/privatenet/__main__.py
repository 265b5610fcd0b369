"""``python -m privatenet`` (and ``torchrun -m privatenet``): the command line."""

import sys

from privatenet.cli import main

if __name__ == "__main__":
    sys.exit(main())
