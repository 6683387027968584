"""`python -m ponybot_cli ...` is `ponybot ...` without the installed script."""

import sys

from ponybot_cli.main import main

sys.exit(main())
