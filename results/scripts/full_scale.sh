#!/usr/bin/env bash
# One GPU job of the course at full scale (issue 25), resuming where results/ stops.
#
#   here:        bash results/scripts/prepare_device.sh
#   device tool: run(command="bash results/scripts/full_scale.sh 420", carry=[".gpudata", ".whl"],
#                    timeout_s=560)
#   back here:   tar -xzf <files_at>/results.tgz   (results/ and the README's table), then commit
#
# The first argument is the budget in seconds: no lesson starts past it, nor one whose last run took
# longer than what is left (`run all --budget`), and a lesson still running when it ends is stopped
# and recorded as unfinished, so the job always gets to pack its results (a lesson too long for one
# job is passed over by the next ones); lessons whose results are current are skipped, so
# the same call in the next job goes on from there. GPU_TESTS=1 runs tests/test_gpu.py first, and
# BENCH=1 the speed benchmark (results/bench/DATE_bench.json, with its training and sampling
# levers), both within the budget.
# What this job wrote comes back as $OUT/results.tgz (its files only, within the 16 MiB a file may
# bring back), with the log as $OUT/full_scale.log.
set -u
budget="${1:-420}"
scale="${SCALE:-full}"
out="${OUT:-/tmp/full_scale_out}"
mkdir -p "$out"
exec > >(tee "$out/full_scale.log") 2>&1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
[ -d .gpudata ] && export DIFFUSE_EDU_DATA="$PWD/.gpudata"
command -v nvidia-smi >/dev/null && nvidia-smi -L
python3 -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
start=$SECONDS
marker=$(mktemp)  # what this job writes is newer than this file
if [ "${GPU_TESTS:-0}" = 1 ]; then
  echo "== tests/test_gpu.py"
  timeout 120 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu.py 2>&1 | tail -15
  budget=$(( budget - (SECONDS - start) )); [ "$budget" -lt 1 ] && budget=1
fi
if [ "${BENCH:-0}" = 1 ]; then  # the speed benchmark with its kernel profile, the compile_loss arm included
  echo "== bench"
  timeout 300 python3 -m diffuse_edu bench --scale "$scale" --profile --out "results/bench/$(date -u +%Y-%m-%d)_bench.json"
  budget=$(( budget - (SECONDS - start) )); [ "$budget" -lt 1 ] && budget=1
fi
python3 -m diffuse_edu run all --scale "$scale" --out results/ --budget "$budget"
echo "[${SECONDS}s in all]"
find results README.md -type f -newer "$marker" | tar -czf "$out/results.tgz" -T -  # this job's files only
tar -tzf "$out/results.tgz" | sed 's/^/  wrote /'
ls -la "$out"
