#!/usr/bin/env bash
# Run HERE (not on the GPU machine), in the repository root, before a GPU job of full_scale.sh:
# copies the data sets the full-scale lessons read into .gpudata/ and downloads the wheels the GPU
# machine's image lacks (diffusers, for lesson 05's baseline, and importlib-metadata, which it
# needs) into .whl/. Both folders are git-ignored; name them in the device call's `carry`.
set -euo pipefail
cd "$(dirname "$0")/../.."
data="${DIFFUSE_EDU_DATA:-../shared/datasets}"
mkdir -p .gpudata .whl
cp "$data"/mnist.npz "$data"/fashion_mnist.npz .gpudata/
for wheel in diffusers importlib-metadata; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$wheel"
done
du -ch .gpudata .whl | tail -1
echo "ready: carry [\".gpudata\", \".whl\"] (the working tree and the carried folders travel within 64 MiB)"
