#!/usr/bin/env bash
# The second GPU sitting: students distilled from an ensemble of the first
# sitting's students (gpu_session.sh), three variants side by side on one GPU.
# Each run is an ordinary `train.py --teacher ...` invocation; its arguments
# and the epoch count chosen by --time-budget are in its args.json/checkpoint.
#
# usage: training/gpu_distill.sh DATA_ROOT RUNS_DIR OUT_DIR TOTAL_SECONDS TEACHER.pt...
set -euo pipefail

data=$1 runs=$2 out=$3 total=$4; shift 4
teachers=("$@")
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
t0=$(date +%s)
left() { echo $(( total - ($(date +%s) - t0) )); }

mkdir -p "$runs" "$out"
"$py" "$here/data.py" --data "$data" --splits train val

common=(--data "$data" --device "${DEVICE:-cuda}" --patience 0 --epochs 400 --threads 2
        --width "${STUDENT_WIDTH:-1.0}" --teacher "${teachers[@]}")
job() { # name, extra args...
    local name=$1; shift
    "$py" "$here/train.py" "${common[@]}" --name "$name" --out "$runs/$name" \
        --time-budget $(( $(left) - 20 )) "$@" >"$runs/$name.log" 2>&1
}
job kd_a9t3 --seed 21 --kd-alpha 0.9 --kd-temp 3 &
job kd_a7t4 --seed 22 --kd-alpha 0.7 --kd-temp 4 &
job kd_a9t3_strong --seed 23 --kd-alpha 0.9 --kd-temp 3 --crop-pad 6 --rotate 15 --zoom 0.15 --dropout 0.4 &
wait || true

for r in kd_a9t3 kd_a7t4 kd_a9t3_strong; do
    tar cf "$out/$r.tar" -C "$runs" "$r.log" "$r/best.pt" "$r/metrics.csv" "$r/history.json" "$r/args.json" \
        2>/dev/null || true
done
grep -h "done:\|time budget" "$runs"/*.log || true
echo "session: $(( $(date +%s) - t0 )) s"
