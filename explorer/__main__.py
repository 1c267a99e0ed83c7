"""`python -m explorer ...`: see explorer/app/cli.py."""

import sys

from explorer.app.cli import main

sys.exit(main())
