import sys

from kplab.cli import main

sys.exit(main())
