"""``python -m trainer``: see ``trainer.cli``.

OpenMP threads wait passively by default here: on a shared CPU, spinning threads
made a training step 2-4x slower (see docs/results.md); set OMP_WAIT_POLICY=ACTIVE
to override. It must be set before torch starts its thread pool, hence here.
"""

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())
