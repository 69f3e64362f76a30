#!/usr/bin/env bash
# The GPU plan for one loan, as one command (docs/gpu-suite.md): set-up, then smoke, headline,
# compiled, sweep, pytest, fused-ops and decoding, each under a time cap, each writing
# its records as it measures; a summary in <out>/suite.md. The steps are run by bench/gpu_suite.py
# (`--help` there says every flag) with the Python found here: `$PYTHON`, else python3.
#
#   bash bench/gpu_suite.sh --out /tmp/suite --bundle "$OUT" --wheels .whl --official-repo .official/VideoMAEv2
#   bash bench/gpu_suite.sh --out /tmp/suite --bundle "$OUT" --only pytest --budget 200 ...
#   bash bench/gpu_suite.sh --device cpu --out /tmp/suite      # the rehearsal, at small shapes
#
# It never installs torch: it uses the torch it finds, runs this checkout from its source folder
# and installs only the wheels given with --wheels, into <out>/site. Exit status: 0 when no step
# failed or ran out of time, 1 otherwise, 2 for bad usage.
set -u
PY="${PYTHON:-$(command -v python3 || command -v python)}"
if [ -z "$PY" ]; then echo "error: no python3 on PATH (set PYTHON)" >&2; exit 2; fi
exec "$PY" "$(dirname "${BASH_SOURCE[0]}")/gpu_suite.py" "$@"
