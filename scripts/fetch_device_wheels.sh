#!/usr/bin/env bash
# Wheels the GPU machine's image lacks (diffusers and what it needs there), into the git-ignored .whl/ that
# scripts/train_classroom_gpu.sh installs from. Run once, here, in the repository root (needs the registry).
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> "$(git rev-parse --git-common-dir)/info/exclude"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "diffusers==$(python3 -c 'import diffusers; print(diffusers.__version__)')" importlib_metadata lazy-importer
ls .whl
