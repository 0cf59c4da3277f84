#!/usr/bin/env bash
# The engine's GPU checks and numbers in one run of under 9 minutes (docs/benchmarks.md):
#
#   OUT=<dir> bash bench/gpu_check.sh
#
# 1. tests/engine/test_compile_cuda.py: compile="cudagraphs" and compile=True on the GPU give
#    eager's weights (fp32, bf16-mixed, clipping), the fallbacks and the static-shape error;
#    --noconftest, so a GPU machine with torch and pytest but without the operator's packages runs it.
# 2. bench/engine_overhead.py on cuda, tiny MLP and 6-layer transformer: fp32 and bf16-mixed
#    (volt / raw, Lightning / raw when Lightning is installed), then the compiled rows
#    (cudagraphs and inductor: volt compiled / raw eager, and / a raw loop compiling only the model).
#
# Each step has its own time limit, so a slow one costs its own numbers only; every result
# lands in $OUT (JSON per benchmark, one log per step) and the summary names what failed.
set -uo pipefail

out="${OUT:?set OUT to the directory for results}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$repo/trainer_image${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
failed=()

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $out/NAME.log
    local name="$1" limit="$2"; shift 2
    local started=$SECONDS
    echo ">> $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 15 "$out/$name.log"
    echo "<< $name: exit $rc after $((SECONDS - started))s"
    [[ $rc == 0 ]] || failed+=("$name (exit $rc)")
}

cd "$repo"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.csv"
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/gpu.csv"

step cuda_tests 150 "$python" -m pytest -q -p no:cacheprovider --noconftest tests/engine/test_compile_cuda.py
models=tiny_mlp,medium_transformer
step overhead_fp32 90 "$python" bench/engine_overhead.py --device cuda --models "$models" --repeats 2 \
    --out "$out/engine_overhead_cuda_fp32.json"
step overhead_bf16 90 "$python" bench/engine_overhead.py --device cuda --precision bf16-mixed --models "$models" \
    --repeats 2 --out "$out/engine_overhead_cuda_bf16.json"
step compiled_cudagraphs 90 "$python" bench/engine_overhead.py --device cuda --models "$models" --no-lightning \
    --repeats 2 --compile cudagraphs --out "$out/engine_overhead_cuda_cudagraphs.json"
step compiled_inductor 90 "$python" bench/engine_overhead.py --device cuda --models "$models" --no-lightning \
    --repeats 1 --compile inductor --out "$out/engine_overhead_cuda_inductor.json"

if ((${#failed[@]})); then
    echo "failed: ${failed[*]}"
    exit 1
fi
echo "all steps passed"
