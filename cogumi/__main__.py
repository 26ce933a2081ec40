"""`python -m cogumi ...`: the same CLI as the `cogumi` script, for a checkout that is not
(or not the one) installed."""

import sys

from cogumi.cli import main

sys.exit(main())
