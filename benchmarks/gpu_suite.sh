#!/usr/bin/env bash
# The GPU suite in one command (on a CUDA machine, under 8 minutes): GPU tests, Triton exactness at
# C in {292, 4096, 20000}, loss fwd+bwd vs plain torch / torch.compile and the bandwidth roofline,
# DALI mixed decode (clips/s, PSNR vs PyAV), I3D-R50 bf16 training steps; one results file.
#   bash benchmarks/gpu_suite.sh            # results in benchmarks/results/tmp/ (scratch)
#   bash benchmarks/gpu_suite.sh --save     # results in benchmarks/results/ (to commit, device named)
# Anything missing (no GPU, no DALI) is named in the results and the suite carries on.
set -uo pipefail
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET
exec timeout -k 10 470 python benchmarks/gpu_suite.py "$@"
