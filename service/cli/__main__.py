"""`python -m service.cli`: the `rollcall` command without its installed script."""

import sys

from service.cli.main import main

sys.exit(main())
