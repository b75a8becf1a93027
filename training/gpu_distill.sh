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
# shellcheck source=gpu_common.sh
. "$(dirname "$0")/gpu_common.sh"

common+=(--width "${STUDENT_WIDTH:-1.0}" --teacher "${teachers[@]}")
job() { # name, extra args...
    local name=$1; shift
    train_job "$name" $(( $(left) - 20 )) "$@"
}
# VARIANTS picks the runs (default: all three of the second sitting); SEED0
# offsets their seeds so a later sitting's runs differ from earlier ones.
variants=${VARIANTS:-kd_a9t3 kd_a7t4 kd_a9t3_strong}
seed0=${SEED0:-20}
strong=(--crop-pad 6 --rotate 15 --zoom 0.15 --dropout 0.4)
for v in $variants; do
    case $v in
        kd_a9t3) job "$v" --seed $((seed0 + 1)) --kd-alpha 0.9 --kd-temp 3 & ;;
        kd_a7t4) job "$v" --seed $((seed0 + 2)) --kd-alpha 0.7 --kd-temp 4 & ;;
        kd_a9t3_strong) job "$v" --seed $((seed0 + 3)) --kd-alpha 0.9 --kd-temp 3 "${strong[@]}" & ;;
        *) echo "unknown variant $v" >&2; exit 2 ;;
    esac
done
wait || true

for r in $variants; do pack_run "$r"; done
grep -h "done:\|time budget" "$runs"/*.log || true
echo "session: $(( $(date +%s) - t0 )) s"
