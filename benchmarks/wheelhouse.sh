#!/usr/bin/env bash
# On a machine with a package index: the wheels the GPU check needs beyond a GPU node's own packages,
# into .whl/ (ignored by git). Carry .whl/ with the repository; see benchmarks/README.md, "GPU check".
#   bash benchmarks/wheelhouse.sh [--dir DIR]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-$(command -v python || command -v python3)}"
exec "$PY" -m benchmarks.wheelhouse download "$@"
