import sys

from sidkeyd.cli import main

sys.exit(main())
