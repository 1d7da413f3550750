# Sourced by benchmarks/gpu_check.sh and benchmarks/gpu_train.sh, from the checkout's root with
# $repo set: the interpreter ($PYTHON: the checkout's .venv here, python3 on the GPU machine),
# where the carried wheels go ($SITE), the import path, and the two pieces of the install:
#   wheels_missing   true when bigrestore's dependencies do not import
#   WHEEL_INSTALL    the command that installs the carried .whl/ wheels into $SITE (no index)
SITE=${GPU_SITE:-/tmp/bigrestore-site}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then PYTHON=$repo/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHON PYTHONPATH="$repo:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
wheels_missing() { ! "$PYTHON" -c 'import distributed, zarr, ome_zarr, pydantic' 2>/dev/null; }
WHEEL_INSTALL=("$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir
  --upgrade --target "$SITE" .whl/*.whl)
