#!/usr/bin/env bash
# Prepare .gpu/ (gitignored) for bench/gpu_check.sh on a lent GPU machine that has no network:
#   - the project as a wheel (with the generated protobuf code) and the cp312 wheels of the
#     gRPC/protobuf packages it needs at the versions this venv has (the device's own may differ);
#   - a copy of ../shared/data (the device sees only the repository; .gpu/ is never committed).
# Run here (needs the venv: make install), then carry ".gpu" with the device call.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DATA=${SKETCHSERVE_DATA:-../shared/data}
rm -rf .gpu
mkdir -p .gpu/wheels .gpu/data
make --quiet proto
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w .gpu/wheels .
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
for package in grpcio protobuf grpcio-health-checking grpcio-reflection; do
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/wheels "$package==$(version "$package")"
done
cp -r "$DATA"/. .gpu/data/
du -sh .gpu/wheels .gpu/data
ls .gpu/wheels
