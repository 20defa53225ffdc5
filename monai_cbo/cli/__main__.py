"""``python -m monai_cbo.cli``: the ``monai-cbo`` command."""

import sys

from . import main

sys.exit(main())
