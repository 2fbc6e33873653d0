"""`python -m bolid_core.train --config run.toml`, or `accelerate launch -m bolid_core.train --config run.toml`."""

import sys

from .cli import main

sys.exit(main())
