#!/usr/bin/env bash
# One GPU session: new bench, sync tests, the old code's numbers, then sample quality (what time is left).
set -u
export PYTHONUNBUFFERED=1 DIFFUSE_EDU_DATA=$PWD/.gpudata
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi -L; python3 -c "import torch, sys; print(sys.version, torch.__version__)"
S=$SECONDS
left() { echo $(( $1 - (SECONDS - S) )); }
echo "== after: bench (full)"; timeout 280 python3 -m diffuse_edu bench --scale full --out $OUT/bench_after.json; echo "[t=$((SECONDS-S))s]"
echo "== sync tests"; timeout 80 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu.py 2>&1 | tail -15; echo "[t=$((SECONDS-S))s]"
echo "== before"; PYTHONPATH=/tmp/site:$PWD/.before timeout 130 python3 .gpudata/before_bench.py $OUT/bench_before.json; echo "[t=$((SECONDS-S))s]"
echo "== quality"; timeout $(left 565) python3 .gpudata/quality.py $OUT/quality.json 45; echo "[t=$((SECONDS-S))s]"
