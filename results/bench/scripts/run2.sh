#!/usr/bin/env bash
set -u
export PYTHONUNBUFFERED=1 DIFFUSE_EDU_DATA=$PWD/.gpudata
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
S=$SECONDS
echo "== variants"; timeout 170 python3 .gpudata/variants.py $OUT/variants.json 2>&1 | grep -v Warning; echo "[t=$((SECONDS-S))s]"
echo "== quality"; timeout $(( 330 - (SECONDS - S) )) python3 .gpudata/quality.py $OUT/quality.json 45 2>&1 | grep -v "it/s\]"; echo "[t=$((SECONDS-S))s]"
