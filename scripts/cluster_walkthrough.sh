#!/usr/bin/env bash
# Steps 3-8 of cluster/README.md on this one machine: a two-node `ray start` cluster with token
# authentication (the head with 2 logical GPUs, a worker with its own ports and a custom
# resource), an MLflow server with artifacts, `aop cluster`, `aop search --address
# --tracking-uri` with its driver killed mid-study, `aop resume --address`, and the best
# pipeline loaded by runs:/ URI in a clean folder. Free ports and a temporary folder; every
# process it started is stopped at the end (by process group, not `ray stop`, which would stop
# every Ray of this machine). Run it with the project's venv on PATH.
#
#   scripts/cluster_walkthrough.sh [BUDGET]        # default 6 trials
set -euo pipefail
BUDGET=${1:-6}
BIN=$(dirname "$(command -v python)")
WORK=$(mktemp -d /tmp/aopwalk.XXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  sleep 2
  for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python -c "import socket; s=socket.socket(); s.bind(('',0)); print(s.getsockname()[1])"; }
ports() {  # own ports for one node on a shared machine
  local base=$(( (RANDOM % 300) * 100 + 20000 ))
  echo "--node-manager-port=$(free_port) --object-manager-port=$(free_port)" \
       "--dashboard-agent-listen-port=$(free_port) --dashboard-agent-grpc-port=$(free_port)" \
       "--metrics-export-port=$(free_port) --runtime-env-agent-port=$(free_port)" \
       "--min-worker-port=$base --max-worker-port=$((base + 40))"
}
step() { echo; echo "== $* ($(date +%T))"; }

step "3. token and ray start (head with 2 logical GPUs, worker with a custom resource)"
python -c "import secrets; print(secrets.token_hex(32))" > "$WORK/auth_token"
PORT=$(free_port)
# shellcheck disable=SC2046
RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$WORK/auth_token setsid "$BIN/ray" start --block --head \
  --port "$PORT" --node-ip-address 127.0.0.1 --num-cpus 1 --num-gpus 2 --include-dashboard false \
  --disable-usage-stats --temp-dir "$WORK/h" $(ports) > "$WORK/head.log" 2>&1 &
PIDS+=($!)
until python -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null; do
  sleep 0.5
done
# shellcheck disable=SC2046
RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$WORK/auth_token setsid "$BIN/ray" start --block \
  --address "127.0.0.1:$PORT" --node-ip-address 127.0.0.1 --num-cpus 1 \
  --resources '{"aop_worker": 1}' --disable-usage-stats --temp-dir "$WORK/w" $(ports) \
  > "$WORK/worker.log" 2>&1 &
PIDS+=($!)

step "5. mlflow server --serve-artifacts"
MLPORT=$(free_port)
setsid "$BIN/mlflow" server --host 127.0.0.1 --port "$MLPORT" --workers 1 \
  --backend-store-uri "sqlite:///$WORK/mlflow.db" --artifacts-destination "$WORK/artifacts" \
  --serve-artifacts > "$WORK/mlflow.log" 2>&1 &
PIDS+=($!)
export RAY_AUTH_TOKEN_PATH=$WORK/auth_token       # the driver: token by path, no RAY_AUTH_MODE

step "4. aop cluster: join with the token, list the nodes, check a half-GPU trial"
until grep -q "Ray runtime started" "$WORK/head.log" "$WORK/worker.log" 2>/dev/null \
    && [ "$(grep -l "Ray runtime started" "$WORK/head.log" "$WORK/worker.log" | wc -l)" = 2 ]; do
  sleep 1
done
aop cluster --address "127.0.0.1:$PORT" --gpu 0.5 --concurrency 4
echo "-- a wrong token:"
python -c "import secrets; print(secrets.token_hex(32))" > "$WORK/wrong_token"
RAY_AUTH_TOKEN_PATH=$WORK/wrong_token aop cluster --address "127.0.0.1:$PORT" || echo "exit $?"
echo "-- a request no node holds:"
aop cluster --address "127.0.0.1:$PORT" --gpu 3 || echo "exit $?"

until curl -sf "http://127.0.0.1:$MLPORT/health" > /dev/null; do sleep 1; done
step "6. aop search --address --tracking-uri, its driver killed after 2 trials"
cat > "$WORK/walk.yaml" <<EOF
name: walk
data: {synth: {n_volumes: 2, shape: [12, 32, 32], seed: 3}}
models: [{name: classical}]
search: {searcher: gp, budget: $BUDGET, concurrency: 1}
storage: {study_dir: $WORK/study, tune_storage: file://$WORK/tune-store}
comparison: {baseline: false, random: false}
EOF
START=$(date +%s)
setsid aop search "$WORK/walk.yaml" --address "127.0.0.1:$PORT" \
  --tracking-uri "http://127.0.0.1:$MLPORT" --quiet > "$WORK/search.log" 2>&1 &
DRIVER=$!
RESULTS=$WORK/study/results/gp.jsonl
until [ -f "$RESULTS" ] && [ "$(wc -l < "$RESULTS")" -ge 2 ]; do
  kill -0 "$DRIVER" 2>/dev/null || { cat "$WORK/search.log"; exit 1; }
  sleep 0.5
done
kill -KILL -- "-$DRIVER"; wait "$DRIVER" 2>/dev/null || true
echo "driver killed after $(( $(date +%s) - START )) s with $(wc -l < "$RESULTS") trials recorded"

step "7. aop resume --address on the head"
time aop resume "$WORK/study" --address "127.0.0.1:$PORT" --quiet
python - "$RESULTS" "http://127.0.0.1:$MLPORT" "$WORK/study" <<'EOF'
import json, sys
from aop.tracking import StudyTracker
records = [json.loads(line) for line in open(sys.argv[1])]
ids = [r["trial_id"] for r in records]
children = StudyTracker(sys.argv[3], sys.argv[2], "aop-segmentation").child_runs("gp")
print(len(records), "trials,", len(set(ids)), "distinct,", len(children), "MLflow child runs;",
      "nodes per trial's volumes:",
      [len({n.split("/")[1] for n in r["volume_nodes"].values()}) for r in records])
EOF

step "8. the MLflow UI answers; the best pipeline by runs:/ URI in a clean folder"
curl -sf "http://127.0.0.1:$MLPORT/" | head -c 80; echo
RUN=$(cat "$WORK/study/mlflow_run_id")
mkdir "$WORK/clean" && cd "$WORK/clean"
MLFLOW_TRACKING_URI=http://127.0.0.1:$MLPORT python -c "
import mlflow
from aop.synth import simulate
image, truth = simulate((12, 32, 32), seed=11, n_objects=4)
labels = mlflow.pyfunc.load_model('runs:/$RUN/pipeline').predict(image)
print('segmented', labels.shape, int(labels.max()), 'instances; truth has', int(truth.max()))"
echo "artifacts on the server:"; (cd "$WORK/artifacts" && find . -type f | sort | head -20)
