"""``python -m workers.validation FILE...``: the validate command before it is wired into ``dicom-gateway``."""

import sys

from workers.validation.cli import main

sys.exit(main())
