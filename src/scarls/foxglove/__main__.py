"""`python -m scarls.foxglove --port 8765`: see scarls.foxglove."""

import sys

from scarls.foxglove import main

if __name__ == '__main__':
    sys.exit(main())
