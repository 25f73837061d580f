#!/usr/bin/env bash
# The GPU checks in one go, on a machine whose JAX (and PyTorch, for the peers) sees a CUDA GPU:
#   1. benchmarks/peers.py (LeNet-5 training throughput against plain JAX, Flax, Equinox and
#      PyTorch on CUDA), at each framework's default float32 precision;
#   2. benchmarks/grad_vs_autodiff.py --quick (hand-written / autodiff, per net and per layer);
#   3. benchmarks/compile_time.py (each step compiled in a fresh process: no autotuning shared);
#   4. benchmarks/precision.py (the step in float32, bfloat16 and float16, both gradient modes);
#   5. the tests that run on JAX's default device (hand-written backward vs jax.vjp for every
#      layer and net, the mutation test, the seed's examples, the errors; the CLI, example and
#      distributed tests start their own CPU processes and are left to the CPU run).
#
#     bash benchmarks/gpu.sh OUTDIR        # logs and JSON land in OUTDIR
#
# jaxcnn runs from this checkout (PYTHONPATH), on whatever jax, optax, pytest and peers the
# machine has.  Each stage has a time limit (seconds: PEERS_S, GRADS_S, COMPILE_S, PRECISION_S,
# TESTS_S) so that the others still run; a stage cut short says so in its log.  On one NVIDIA
# H200, peers took about 160 s, grad_vs_autodiff 85 s and the tests 135 s (docs/performance.md,
# section 5); compile_time.py has not run there yet (eight processes, each initialising CUDA),
# nor has precision.py (three nets x two gradient modes x three precisions, 30 rounds each).
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu.sh OUTDIR}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 1    # absolute: the script changes directory
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export XLA_PYTHON_CLIENT_PREALLOCATE=false     # several processes share the GPU
py=${PYTHON:-python3}
status=0

stage() {   # stage NAME SECONDS COMMAND...: run it with a limit, its output to OUTDIR/NAME.log
    local name=$1 limit=$2 rc
    shift 2
    echo "== $name (limit ${limit} s): $*"
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 124 ] && printf '\n' && echo "== $name: cut short at ${limit} s" | tee -a "$out/$name.log"
    [ "$rc" = 0 ] || status=1
    echo "== $name: exit status $rc"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $py -c "import jax, optax; print('jax', jax.__version__, jax.devices(), 'optax', optax.__version__)"
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    || true
  $py -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda[0-9]+-(plugin|pjrt)|optax|flax|equinox|torch|triton|numpy) '
  nproc; } 2>&1 | tee "$out/machine.txt"
if ! $py -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')"; then
    echo "JAX does not see a GPU here (its backend: $($py -c 'import jax; print(jax.default_backend())' 2>&1)); nothing run" >&2
    exit 1
fi

stage peers "${PEERS_S:-260}" $py benchmarks/peers.py --repeats 20 --block 6 \
    --json "$out/peers-gpu.json"
stage grads "${GRADS_S:-150}" $py benchmarks/grad_vs_autodiff.py --quick --seconds 0.2 \
    --json "$out/grad_vs_autodiff-gpu.json"
stage compile "${COMPILE_S:-150}" $py benchmarks/compile_time.py --nets lenet5,deepid \
    --batch 128 --repeats 2 --json "$out/compile_time-gpu.json"
stage precision "${PRECISION_S:-150}" $py benchmarks/precision.py --batch 256 --rounds 30 \
    --json "$out/precision-gpu.json"
workers=$($py -c "import xdist" 2>/dev/null && echo "-n ${WORKERS:-8}")  # pytest-xdist, if there
# tests: no convolution autotuning (it only picks the fastest algorithm; compiles sooner);
# pytest-benchmark, where installed, warns under xdist, and the tests make warnings errors
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0" \
stage tests "${TESTS_S:-200}" $py -m pytest -v --tb=short -p no:cacheprovider -p no:benchmark $workers \
    tests/test_layers.py tests/test_networks.py tests/test_mutation.py tests/test_seed.py \
    tests/test_audit.py tests/test_errors.py tests/test_summary.py tests/test_train.py \
    tests/test_show.py tests/test_api_doc.py tests/test_data.py tests/test_precision.py
exit $status
