"""``python -m apps.bench`` (what ``make bench`` runs) is ``tenantflow bench``."""

import sys

from apps.bench import main

sys.exit(main())
