"""`python -m cogumi ...` is the `cogumi` command."""

import sys

from cogumi.cli import main

sys.exit(main())
