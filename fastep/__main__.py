import sys

from fastep.cli import main

sys.exit(main())
