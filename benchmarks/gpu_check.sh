#!/usr/bin/env bash
# The GPU check (issues 14, 18): every measurement a short GPU window needs, in one offline run.
#   bash benchmarks/gpu_check.sh [--out DIR] [--parts a,b] [--budget SECONDS] [--cpu-smoke]
# First it installs, offline from .whl/ (benchmarks/wheelhouse.sh), any package the check needs that
# does not import here, and says where each package came from. summary.json and gpu_check.tar.gz go
# to --out, else $OUT, else benchmarks/results/gpu_check/; the exit code is 1 if a part failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-$(command -v python || command -v python3 || true)}"
if [ -z "$PY" ]; then echo "error: neither python nor python3 is on PATH; set PYTHON" >&2; exit 2; fi
SITE="${MUONLAB_WHEEL_TARGET:-${TMPDIR:-/tmp}/muonlab_gpu_check_site}"
sources="$("$PY" -m benchmarks.wheelhouse install --target "$SITE")"
echo "$sources"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m benchmarks.gpu_check --sources "$sources" "$@"
