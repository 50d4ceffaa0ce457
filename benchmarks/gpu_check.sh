#!/usr/bin/env bash
# The GPU check (issue 14): every measurement a short GPU window needs, in one offline run.
#   bash benchmarks/gpu_check.sh [--out DIR] [--parts a,b] [--budget SECONDS] [--cpu-smoke]
# One JSON per part and summary.json go to --out, else $OUT, else benchmarks/results/gpu_check/;
# the exit code is 1 if a part failed. See benchmarks/README.md, "GPU check".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python}" -m benchmarks.gpu_check "$@"
