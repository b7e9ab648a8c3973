#!/usr/bin/env bash
# The checks that need a GPU, as one script (issue 15: the gpu tests, the nccl DDP test, the CUDA benchmark rows,
# the compiled step on CUDA).
#
#   bash scripts/gpu_check.sh prepare   # here, on a machine with pip: builds the pure-Python wheels the GPU
#                                       # machine lacks into .whl/ (ignored by git; carry it)
#   bash scripts/gpu_check.sh run       # on the GPU machine (python3 with CUDA torch), from the repository root;
#                                       # writes its logs and tables into $OUT (default gpu_check/)
#
# `run` installs .whl/*.whl into /tmp/site (no index, no dependencies: torch, numpy, scipy, matplotlib, tqdm and
# scikit-learn come from the machine) and imports mog_flows from the checkout. Each step's log goes to $OUT, and
# the script's exit status is that of the first failed step (every step runs regardless).
set -uo pipefail
WHEELS=(nflows==0.14 zuko==1.6.0 normflows==1.7.3 pyro-ppl==1.9.2 pyro-api==0.1.2 glasflow==0.4.1 FrEIA==0.2)
mode=${1:-run}
cd "$(dirname "$0")/.."

if [[ $mode == prepare ]]; then
    python=${PYTHON:-.venv/bin/python}
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    exec "$python" -m pip wheel -q --no-deps -w .whl "${WHEELS[@]}"
fi
if [[ $mode != run ]]; then
    echo "usage: bash scripts/gpu_check.sh prepare|run" >&2
    exit 2
fi

python=${PYTHON:-python3}
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
status=0
step() {  # step NAME COMMAND...: run it, log to $OUT/NAME.log, remember the first failure
    local name=$1
    shift
    echo "== $name: $*"
    "$@" >"$OUT/$name.log" 2>&1
    local code=$?
    tail -n 15 "$OUT/$name.log"
    echo "== $name: exit $code"
    [[ $code -ne 0 && $status -eq 0 ]] && status=$code
}
"$python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.device_count(), 'GPU(s)')"
step gpu_tests "$python" -m pytest -q -p no:cacheprovider -m gpu -rs tests
step bench_cuda "$python" benchmarks/bench_cuda.py --out "$OUT"
step bench_compile "$python" benchmarks/bench_compile.py --out "$OUT"
exit $status
