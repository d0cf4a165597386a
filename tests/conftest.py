"""Suite-wide settings. Service fixtures (Redis, S3) live in their own conftest files."""

import os

import torch

# Tests run beside other CPU-heavy jobs on a 2-core machine; OpenMP threads that
# outnumber the free cores spin and slow everything down. PEMN_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("PEMN_TEST_THREADS", "1")))
