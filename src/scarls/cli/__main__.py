"""`python -m scarls.cli ...`: the `scarls` command (see scarls.cli)."""

import sys

from scarls.cli import main

if __name__ == '__main__':
    sys.exit(main())
