"""`python -m scarls.dashboard --port 8080`: see scarls.dashboard."""

import sys

from scarls.dashboard import main

if __name__ == '__main__':
    sys.exit(main())
