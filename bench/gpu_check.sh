#!/usr/bin/env bash
# The one script a GPU session runs to check fastat's CUDA kernels end to end, in the repository root:
#
#   build      MAX_JOBS=16 FASTAT_CUDA=1 pip install --no-build-isolation -e .   (fails loudly without CUDA)
#   info       python -m fastat.info
#   tests      pytest -m cuda -q tests/gpu (tests_cuda); after the benchmark, pytest -m cuda -q tests (tests_rest)
#   bench      python bench/bench_ops.py --device cuda --out $OUT (run right after tests_cuda)
#   memcheck   compute-sanitizer --tool memcheck  over pytest -x tests/gpu (FASTAT_CUDA_TEST_SHAPES=sanitizer)
#   racecheck  compute-sanitizer --tool racecheck over the shared-memory kernels' tests (same reduced shapes)
# and, when named in GPU_CHECK_STAGES (not by default: they do not fit in one 600 s call with the above),
#   triton     pytest -m triton tests/ops (the Triton kernels compiled for the GPU, no interpreter)
#   evalbench  python bench/bench_eval_pgd.py --device cuda --out $OUT/eval_pgd.json (PGD-50-10, batched vs plain)
#   steps      python bench/bench_steps.py --shapes cifar --backend auto,torch --modes eager,graph --out $OUT
#   compile    python bench/bench_steps.py --methods fgsm_rs,zerograd,atas --modes eager,compile --batch-sizes 128,512
#              --out $OUT/compile (train --compile on CUDA: inductor, bf16 autocast, channels_last; its step time)
#   hoststate  python bench/bench_steps.py --methods fgsm_rs,atas,atas_host=atas --hp atas_host.state_device=cpu
#              --out $OUT/host (ATAS with its δ/v in host memory: the step's cost over device-resident state)
#   ddp        torchrun --nproc_per_node=2 -m fastat train (ATAS, PreActResNet-18, 2 epochs on 8192 Fashion-MNIST
#              images, bf16) with gloo ranks sharing the one GPU: DDP on CUDA tensors end to end; metrics.jsonl
#              copied to $OUT/ddp_metrics.jsonl (needs data/fashion-mnist carried)
#
# and prints a summary table last. Everything it writes goes under $OUT (default: bench/results/gpu_check): summary.md,
# gpu_check.log (every stage's output) and the benchmark's <date>-<gpu>/ops.{csv,json,md}: 5 files, 2 folders deep.
# A global deadline keeps the whole run under GPU_CHECK_BUDGET seconds (default 540; the device allows 600 per
# command): each stage gets min(its cap, time left), and stages that no longer fit are reported as skipped.
#
# Environment: GPU_CHECK_STAGES (default "build info tests memcheck racecheck bench"), GPU_CHECK_BUDGET, PYTHON
# (default python3), MAX_JOBS (default 16), SANITIZER_ARGS (extra compute-sanitizer flags, e.g. a kernel filter).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-bench/results/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
STAGES="${GPU_CHECK_STAGES:-build info tests memcheck racecheck bench}"
BUDGET="${GPU_CHECK_BUDGET:-540}"
LOG="$OUT/gpu_check.log"
STATUS="$OUT/.status"  # stage|result|seconds|note lines, turned into summary.md at the end
: >"$LOG"
: >"$STATUS"
START=$(date +%s)
DEADLINE=$((START + BUDGET))
export PYTHONUNBUFFERED=1

declare -A CAP=([build]=200 [info]=30 [tests_cuda]=150 [tests_rest]=120 [memcheck]=120 [racecheck]=90 [bench]=120
                [triton]=200 [evalbench]=240 [steps]=240 [compile]=240
                [hoststate]=150)
BUILD_OK=1

wanted() { [[ " $STAGES " == *" $1 "* ]]; }

# run_stage NAME CMD...: runs CMD under `timeout` (min of its cap and the time left), appends its output to the log,
# records ok / FAIL (rc) / TIMEOUT / skipped with the seconds it took.
run_stage() {
  local name="$1"
  shift
  local now left cap t0 rc
  now=$(date +%s)
  left=$((DEADLINE - now - 10))
  cap=${CAP[$name]:-120}
  ((cap > left)) && cap=$left
  if ((cap < 15)); then
    echo "$name|skipped|0|no time left in the ${BUDGET}s budget" >>"$STATUS"
    return 1
  fi
  {
    echo
    echo "=================================================================== $name (cap ${cap}s)"
    echo "\$ $*"
  } >>"$LOG"
  echo ">>> $name (cap ${cap}s)"
  t0=$(date +%s)
  # through bash -c so that CMD may be one of the exported functions below
  timeout --kill-after=10 "$cap" bash -c '"$@"' _ "$@" >>"$LOG" 2>&1
  rc=$?
  local secs=$(($(date +%s) - t0))
  local result="ok"
  if ((rc == 124 || rc == 137)); then result="TIMEOUT"; elif ((rc != 0)); then result="FAIL($rc)"; fi
  echo "$name|$result|$secs|$(stage_note "$name")" >>"$STATUS"
  echo "<<< $name: $result in ${secs}s"
  return $rc
}

# A one-line note from the end of the log: pytest's result line, the sanitizer's error summary.
stage_note() {
  local section
  section="$(awk -v s="=== $1 (cap" 'index($0, s) {buf=""} {buf = buf $0 "\n"} END {printf "%s", buf}' "$LOG")"
  case "$1" in
    tests_* | triton) grep -E "(passed|failed|error|skipped|no tests ran)" <<<"$section" | grep -E " in [0-9.]+s" | tail -n 1 ;;
    memcheck | racecheck)
      { grep -E "ERROR SUMMARY|RACECHECK SUMMARY" <<<"$section" | tail -n 2 | tr '\n' ' '
        grep -E " in [0-9.]+s" <<<"$section" | tail -n 1; } | tr -s ' ' ;;
    build) grep -E "Successfully installed|error:|Error" <<<"$section" | tail -n 1 | cut -c1-120 ;;
    ddp) grep -E "^epoch +[0-9]+" <<<"$section" | tail -n 1 | cut -c1-120 ;;
    *) echo "" ;;
  esac
}

sanitize() {  # sanitize TOOL PYTEST_ARGS...
  local tool="$1"
  shift
  if ! command -v compute-sanitizer >/dev/null 2>&1; then
    echo "compute-sanitizer not on PATH" >>"$LOG"
    return 2
  fi
  # Without the caching allocator every tensor is its own cudaMalloc, so memcheck sees accesses past its end.
  env FASTAT_CUDA_TEST_SHAPES=sanitizer PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 20 ${SANITIZER_ARGS:-} \
    "$PY" -m pytest -x -q -p no:cacheprovider tests/gpu "$@"
}
export -f sanitize
export PY LOG

echo "gpu_check: stages [$STAGES], budget ${BUDGET}s, output in $OUT"
{
  echo "gpu_check $(date -Is) in $(pwd) ($(git rev-parse --short HEAD 2>/dev/null || echo no-git))"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  "$PY" -c "import torch as t; print('torch', t.__version__, 'cuda', t.version.cuda, 'gpu', t.cuda.is_available())" 2>&1
  command -v nvcc >/dev/null && nvcc --version | tail -n 1
} >>"$LOG"

if wanted build; then
  if ! run_stage build env MAX_JOBS="${MAX_JOBS:-16}" FASTAT_CUDA=1 \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .; then
    BUILD_OK=0
  fi
fi

if ((BUILD_OK)); then
  wanted info && run_stage info "$PY" -m fastat.info
  # the kernels' own tests, then the benchmark (issue #3's numbers), then the rest: with 15 device-minutes a session
  # may get one call, and the stages that do not fit in its budget are the ones skipped
  wanted tests && run_stage tests_cuda "$PY" -m pytest -m cuda -q -p no:cacheprovider -rfE tests/gpu
  wanted bench && run_stage bench "$PY" bench/bench_ops.py --device cuda --out "$OUT"
  wanted tests && run_stage tests_rest "$PY" -m pytest -m cuda -q -p no:cacheprovider -rfE tests --ignore=tests/gpu
  # Memory errors in every CUDA kernel; shared-memory races in the kernels that use shared memory (zerograd's
  # histograms/scans and cluster exchange, atas_step's block reduction).
  wanted memcheck && run_stage memcheck sanitize memcheck \
    -k "matches_reference or special_rows or storage_offsets or more_rows or mixed_layouts or out_of_range or reproducible or saturates"
  wanted racecheck && run_stage racecheck sanitize racecheck \
    -k "(zerograd or atas_step) and not opcheck and not deterministic and not graph"
  wanted triton && run_stage triton "$PY" -m pytest -m triton -q -p no:cacheprovider -rfE tests/ops
  wanted evalbench && run_stage evalbench "$PY" bench/bench_eval_pgd.py --device cuda --out "$OUT/eval_pgd.json"
  wanted steps && run_stage steps "$PY" bench/bench_steps.py --shapes cifar --backend auto,torch --modes eager,graph \
    --budget 200 --out "$OUT"
  wanted compile && run_stage compile "$PY" bench/bench_steps.py --shapes cifar --backend auto \
    --methods fgsm_rs,zerograd,atas --modes eager,compile --batch-sizes 128,512 --budget 200 --out "$OUT/compile"
  wanted hoststate && run_stage hoststate "$PY" bench/bench_steps.py --shapes cifar --backend auto \
    --methods fgsm_rs,atas,atas_host=atas --hp atas_host.state_device=cpu --batch-sizes 512,128 --budget 120 \
    --out "$OUT/host"
  wanted ddp && run_stage ddp bash -c "rm -rf /tmp/fastat_ddp && FASTAT_DIST_BACKEND=gloo OMP_NUM_THREADS=4 \
    $PY -m torch.distributed.run --standalone --nproc_per_node=2 -m fastat train --method atas --model preact18 \
    --subset 8192 --batch-size 512 --epochs 2 --eval-n 512 --device cuda --precision bf16 --out /tmp/fastat_ddp \
    --no-progress && cp /tmp/fastat_ddp/metrics.jsonl '$OUT/ddp_metrics.jsonl'"
else
  echo "build|not run|0|the build failed: see gpu_check.log" >>"$STATUS"
fi

"$PY" - "$STATUS" "$OUT" "$(($(date +%s) - START))" <<'PYEOF' | tee "$OUT/summary.md"
import glob, json, sys

status, out, total = sys.argv[1], sys.argv[2], sys.argv[3]
print(f"## gpu_check summary ({total}s)\n")
print("| stage | result | seconds | note |\n|---|---|---|---|")
for line in open(status):
    name, result, secs, note = (line.rstrip("\n").split("|", 3) + [""])[:4]
    print(f"| {name} | {result} | {secs} | {note.strip()} |")

files = sorted(glob.glob(f"{out}/*/ops.json"))
if files:
    rows = json.load(open(files[-1]))["rows"]
    targets = {(512, 3072): 10.0, (64, 150528): 20.0}
    print("\n| op | shape | grad | native ms | torch ms | vs torch | target | × copy floor (≤ 2) |")
    print("|---|---|---|---|---|---|---|---|")
    key_of = lambda r: (r["op"], r["rows"], r["cols"], r["grad_dtype"])  # noqa: E731
    torch_ms = {key_of(r): r["median_ms"] for r in rows if r["backend"] == "torch"}
    for r in rows:
        if r["backend"] != "native":
            continue
        key = key_of(r)
        target = targets.get((r["rows"], r["cols"]))
        ok = "" if target is None else ("met" if r["speedup_vs_torch"] >= target else "MISSED")
        print(f"| {r['op']} | {r['rows']}×{r['cols']} | {r['grad_dtype']} | {r['median_ms']:.4f} | "
              f"{torch_ms.get(key, float('nan')):.4f} | {r['speedup_vs_torch']:.1f}× | "
              f"{'' if target is None else f'≥{target:.0f}× {ok}'} | {r['floor_ratio']:.2f} |")
PYEOF
rm -f "$STATUS"
grep -qE "^\| [a-z_]+ \| (FAIL|TIMEOUT|not run)" "$OUT/summary.md" && exit 1
exit 0
