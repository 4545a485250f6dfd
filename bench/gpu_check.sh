#!/usr/bin/env bash
# The accelerator check of topk-service, in one go: under 8 minutes on an NVIDIA GPU host.
#
#   bench/gpu_check.sh [RESULTS_DIR]            # GPU host: JAX's CUDA backend (pip install -e '.[dev,cuda]')
#   bench/gpu_check.sh --dry-run [RESULTS_DIR]  # any machine, CPU, tiny budget (part of `make test`)
#
# RESULTS_DIR defaults to $OUT, else ./gpu_check_results. Every step runs under `timeout`, writes
# RESULTS_DIR/<step>.log (benches also .md), and one line of RESULTS_DIR/summary.md; the exit status
# is the number of failed steps. Steps (full run):
#   1 devices       jax.devices(), backend, nvidia-smi
#   2 device-paths  the code paths that differ on accelerators, forced both ways on this device: the
#                   PAV's rows sequential (lax.map, CPU) vs vmapped lock-step (accelerators); float64
#                   on the device; batches host -> device -> host through the compiled kernels, with
#                   a device-resident direction and staged in pinned host memory
#   3 sharding      the batch axis sharded across devices (tests/service/device/sharded_check.py on
#                   4 forced host devices; the service below shards across all GPUs, TOPK_DEVICES=0)
#   4 bench-core    bench/core.py --quick: ratios to lax.top_k on the same device
#   5 bench-soft    bench/soft.py --quick: the SOFT mask's ratios to lax.top_k on the same device
#   6 service       python -m service on the device: ready, answers equal the core's on the host,
#                   metrics name the backend, SIGTERM drains and exits 0
#   7 bench-service bench/service.py --quick: requests/s of the service on the device vs an echo
#   8 core-tests    tests/core on the device (float32 and float64: the tests pick the dtype, x64
#                   on), last: it takes what is left of the budget
# The dry run runs the same steps on the CPU with tiny inputs: pytest collects tests/core and the
# device-path files instead of running them (make test runs them), the sharding step is
# tests/service/device/test_sharding.py's job, and the service runs a small configuration (one
# 8x64 cover, tests/conftest.py's TEST_COVER) from GPU_CHECK_CACHE, which the tests share.
# GPU_CHECK_CACHE: the executable store of both service steps (default .jax_cache/gpu_check): the
# second start loads what the first compiled. GPU_CHECK_BUDGET_S: the whole run's budget.
set -u

DRY_RUN=0
DIR=""
for argument in "$@"; do
  case "$argument" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) DIR="$argument" ;;
  esac
done
DIR="${DIR:-${OUT:-gpu_check_results}}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
cd "$ROOT" || exit 99
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=".venv/bin/python"
else PY="python3"; fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PY DIR DRY_RUN ROOT
# Several processes take the GPU one after another; none may keep 75 % of its memory.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
if [ "$DRY_RUN" = 1 ]; then
  export JAX_PLATFORMS=cpu
  BUDGET=${GPU_CHECK_BUDGET_S:-150}
else
  export JAX_PLATFORMS=${GPU_CHECK_PLATFORMS:-cuda}  # fail loudly rather than fall back to the CPU
  BUDGET=${GPU_CHECK_BUDGET_S:-470}
fi
CACHE="${GPU_CHECK_CACHE:-$ROOT/.jax_cache/gpu_check}"
mkdir -p -m 700 "$CACHE"
# Only the service's own settings (service/settings.py refuses unknown TOPK_* names); the caller's
# other TOPK_* variables are dropped, so that the check runs what it says.
for name in $(env | sed -n 's/^\(TOPK_[A-Z0-9_]*\)=.*/\1/p'); do unset "$name"; done
export TOPK_COMPILATION_CACHE_DIR="$CACHE" TOPK_DRAIN_DELAY_S=0 TOPK_GRPC_PORT=""
if [ "$DRY_RUN" = 1 ]; then  # tests/service/serving.py's SMALL: one 8x64 cover, nothing else
  export TOPK_ROW_BUCKETS=1,2,4,8 TOPK_N_BUCKETS=16,32,64 TOPK_MAX_ROWS=8 TOPK_MAX_N=64 \
    TOPK_MAX_K=64 TOPK_MAX_ENTRIES=512 TOPK_MAX_BATCH_ROWS=8 TOPK_COVER_BUCKETS=8x64 \
    TOPK_COMPILE_ON_DEMAND=false TOPK_WARMUP_OPERATORS=""
fi
START=$(date +%s)
FAILED=0
SUMMARY="$DIR/summary.md"
{
  echo "# gpu_check $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
  echo
  echo "mode: $([ "$DRY_RUN" = 1 ] && echo 'dry run (CPU, tiny)' || echo 'full'), JAX_PLATFORMS=$JAX_PLATFORMS, budget ${BUDGET} s, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo "| step | status | seconds | log |"
  echo "|---|---|---:|---|"
} > "$SUMMARY"

# step NAME SECONDS COMMAND...: run under timeout (capped by what is left of the budget), log it.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  local status
  if [ "$left" -lt 5 ]; then
    echo "| $name | skipped (budget spent) | 0 | – |" >> "$SUMMARY"
    FAILED=$((FAILED + 1))
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local began=$(date +%s)
  echo "== $name (at most ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" > "$DIR/$name.log" 2>&1
  local rc=$?
  local took=$(($(date +%s) - began))
  if [ $rc = 0 ]; then status="ok"
  elif [ $rc = 124 ] || [ $rc = 137 ]; then status="TIMED OUT after ${limit} s"; FAILED=$((FAILED + 1))
  else status="FAILED (exit $rc)"; FAILED=$((FAILED + 1)); fi
  echo "   $status in ${took} s"
  echo "| $name | $status | $took | $name.log |" >> "$SUMMARY"
}

devices() {
  "$PY" - <<'PY'
import jax, jaxlib
print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "backend", jax.default_backend())
for d in jax.devices():
    print(d, d.device_kind, sorted(m.kind for m in d.addressable_memories()))
import os
if os.environ.get("JAX_PLATFORMS") not in ("", "cpu") and jax.default_backend() != "gpu":
    raise SystemExit(f"expected a GPU, got {jax.default_backend()}")
PY
  local rc=$?
  command -v nvidia-smi > /dev/null && nvidia-smi
  return $rc
}

# The service on this device: started, checked against the core (on the host CPU), drained.
service_check() {
  local port log="$DIR/service-server.log"
  port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  if [ "$DRY_RUN" != 1 ]; then  # the exact kernels of the answers below, besides the covers
    export TOPK_WARMUP_OPERATORS=sparse,hard TOPK_WARMUP_ROW_BUCKETS=1,2,4,8,16 TOPK_WARMUP_N_BUCKETS=16,64
  fi
  export TOPK_DEVICES=0  # all local devices: the batch axis is sharded when there are several
  "$PY" -m service --host 127.0.0.1 --port "$port" --log-level info > "$log" 2>&1 &
  local server=$!
  trap 'kill -TERM $server 2> /dev/null' EXIT  # also when `timeout` ends this step
  DRY_RUN=$DRY_RUN PORT=$port JAX_PLATFORMS=cpu "$PY" - <<'PY'
import json, os, time, urllib.request
import numpy as np

base = f"http://127.0.0.1:{os.environ['PORT']}"

def call(path, body=None):
    request = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return answer.status, answer.read()

deadline = time.monotonic() + 300
while True:
    try:
        status, body = call("/readyz")
        if status == 200:
            break
    except Exception:
        pass
    if time.monotonic() > deadline:
        raise SystemExit("not ready")
    time.sleep(0.5)
print("ready", body.decode())
import core  # on the host CPU: the reference for the device's answers
rng = np.random.default_rng(0)
x = rng.normal(size=(3, 12)).round(3)
cases = [{"operator": "hard", "x": x.tolist(), "k": 2}]
if os.environ["DRY_RUN"] != "1":
    cases.append({"x": x.tolist(), "k": [1, 2, 3], "tangent": x[::-1].tolist()})
for case in cases:
    status, body = call("/v1/topk", case)
    rows = json.loads(body)["rows"]
    if case.get("operator") == "hard":
        expected = np.asarray(core.hard_topk_mask(x.astype(np.float32), 2))
    else:
        expected = np.asarray(core.sparse_topk_mask(x.astype(np.float32), np.array([1, 2, 3])))
    for i, row in enumerate(rows):
        dense = np.zeros(12)
        dense[row["indices"]] = row["values"]
        assert np.allclose(dense, expected[i], atol=1e-5), (case, i, dense, expected[i])
    print("answer ok:", case.get("operator", "sparse"), "rows", len(rows))
status, body = call("/metrics")
backends = sorted({line.split('backend="')[1].split('"')[0] for line in body.decode().splitlines() if 'backend="' in line})
print("metrics backend label:", backends)
if os.environ["DRY_RUN"] != "1" and "gpu" not in backends:
    raise SystemExit("the service does not run on the GPU")
PY
  local rc=$?
  kill -TERM "$server"
  wait "$server"
  local stopped=$?
  trap - EXIT
  # A drained server exits 0 (service/__main__.py).
  echo "server exit status after SIGTERM: $stopped"
  tail -n 20 "$log"
  [ $rc = 0 ] && [ $stopped = 0 ] && grep -q "Finished server process" "$log"
}

export -f devices service_check
DEVICE_PATHS=(tests/core/test_device_paths.py tests/service/device/test_device_transfer.py)
step devices 60 bash -c devices
if [ "$DRY_RUN" = 1 ]; then
  step device-paths 30 "$PY" -m pytest -q -p no:cacheprovider --collect-only "${DEVICE_PATHS[@]}"
  echo "| sharding | not run in the dry run (tests/service/device/test_sharding.py runs it in make test) | 0 | – |" >> "$SUMMARY"
  step core-tests 30 "$PY" -m pytest -q -p no:cacheprovider --collect-only tests/core
  step bench-core 60 "$PY" bench/core.py --tiny
  step bench-soft 60 "$PY" bench/soft.py --tiny
  step service 90 bash -c service_check
  step bench-service 60 "$PY" bench/service.py --quick --clients 1 --duration 0.2
else  # the core tests last: the longest step takes what is left of the budget
  step device-paths 120 "$PY" -m pytest -q -p no:cacheprovider "${DEVICE_PATHS[@]}"
  step sharding 120 env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 "$PY" -m tests.service.device.sharded_check
  step bench-core 100 "$PY" bench/core.py --quick --skip pav,pav_jvp,dykstra,ott,jaxopt,scipy
  step bench-soft 60 "$PY" bench/soft.py --quick
  step service 150 bash -c service_check  # a cold start compiles the covers on the GPU
  step bench-service 90 "$PY" bench/service.py --quick --duration 1
  step core-tests 300 "$PY" -m pytest -q -p no:cacheprovider -m "not slow" --durations=10 tests/core
fi
for name in bench-core bench-soft bench-service; do
  [ -f "$DIR/$name.log" ] && grep '^|' "$DIR/$name.log" > "$DIR/$name.md"
done
{
  echo
  echo "failed steps: $FAILED; total $(($(date +%s) - START)) s"
} >> "$SUMMARY"
cat "$SUMMARY"
exit "$FAILED"
