import sys

from pyns.cli.main import main

sys.exit(main())
