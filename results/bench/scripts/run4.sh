#!/usr/bin/env bash
# 2026-11-27, one GPU call: where a training step's time goes, and whether CUDA graphs
# (torch.compile mode "reduce-overhead") and cuDNN's autotuner change the images/s.
set -u
export PYTHONUNBUFFERED=1
nvidia-smi -L; python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__)"
S=$SECONDS
B="-m diffuse_edu bench --scale full --profile"
quiet() { grep -v -e Warning -e USDT -e "warnings.warn"; }
echo "== default: compile, bf16, channels_last"
timeout 170 python3 $B --samplers ddim-50 --out $OUT/bench_default.json 2>&1 | quiet; echo "[t=$((SECONDS-S))s]"
echo "== CUDA graphs: compile mode reduce-overhead"
timeout 110 python3 $B --samplers none --compile-mode reduce-overhead --out $OUT/bench_cudagraphs.json 2>&1 | quiet; echo "[t=$((SECONDS-S))s]"
echo "== CUDA graphs + cudnn.benchmark"
timeout 80 python3 -c "
import sys, torch
torch.backends.cudnn.benchmark = True
from diffuse_edu.course import cli
sys.exit(cli.main(sys.argv[1:]))" bench --scale full --samplers none --compile-mode reduce-overhead --out $OUT/bench_cudagraphs_cudnn_benchmark.json 2>&1 | quiet
echo "[t=$((SECONDS-S))s]"
