"""`python -m benchmarks.gpu_check`: see benchmarks/gpu_check/__init__.py."""

import sys

from benchmarks.gpu_check.harness import main

sys.exit(main())
