#!/usr/bin/env bash
# The third GPU sitting: distillation runs longer than one device call (a call
# is at most 10 minutes), split over several fixed-length sittings. Students
# are distilled from a teacher ensemble, several variants side by side on one
# GPU, as in gpu_distill.sh. Each run is an ordinary `train.py --teacher ...`
# invocation: the first sitting plans its epoch count for PLAN seconds of
# training (--time-budget), the sitting's end stops it (last.pt is written
# after every epoch, atomically), and a later sitting resumes it (RESUME=1),
# re-timing the rest of the schedule from the epoch times recorded so far so
# that the run ends, fully annealed, inside that sitting.
#
# usage: training/gpu_long.sh DATA_ROOT RUNS_DIR OUT_DIR SECONDS PLAN TEACHER.pt...
#   SECONDS  wall clock of this sitting (jobs are stopped 10 s before it ends)
#   PLAN     training seconds planned for the whole run, all sittings together
# INIT names the checkpoint the variant long_init starts from; VARIANTS picks
# the runs; MPS=1 runs them under CUDA MPS (checked first, dropped if it fails).
set -euo pipefail

data=$1 runs=$2 out=$3 total=$4 plan=$5; shift 5
teachers=("$@")
# shellcheck source=gpu_common.sh
. "$(dirname "$0")/gpu_common.sh"

if [ "${MPS:-0}" = 1 ] && [ "${DEVICE:-cuda}" = cuda ]; then
    # Small kernels from several processes run concurrently only under MPS.
    nvidia-cuda-mps-control -d 2>/dev/null || true
    if timeout 60 "$py" -c 'import torch; torch.ones(1, device="cuda").sum().item()'; then
        echo "MPS: on"
    else
        echo quit | nvidia-cuda-mps-control 2>/dev/null || true
        echo "MPS: failed, running without it"
    fi
fi

common+=(--width "${STUDENT_WIDTH:-1.0}" --teacher "${teachers[@]}")
strong=(--crop-pad 6 --rotate 15 --zoom 0.15 --dropout 0.4)
kd=(--kd-alpha 0.9 --kd-temp 3)

# job NAME [train.py args...]: one run (gpu_common.sh's train_job), stopped when the sitting ends
job() {
    local name=$1; shift
    local budget=$plan resume=()
    if [ -n "${RESUME:-}" ]; then budget=$(( $(left) - 15 )); resume=(--resume); fi
    JOB_TIMEOUT=$(( $(left) - 10 )) train_job "$name" "$budget" "${resume[@]}" "$@" || true
}
variants=${VARIANTS:-long_strong long_plain long_mixup long_init long_pure}
for v in $variants; do
    case $v in
        long_strong) job "$v" --seed 41 "${kd[@]}" "${strong[@]}" & ;;
        long_plain) job "$v" --seed 42 "${kd[@]}" & ;;
        long_mixup) job "$v" --seed 43 "${kd[@]}" --mixup 0.4 & ;;
        long_init) job "$v" --seed 44 "${kd[@]}" "${strong[@]}" --init "${INIT:?INIT names the checkpoint}" --lr 1e-3 & ;;
        long_pure) job "$v" --seed 45 --kd-alpha 1.0 --kd-temp 3 "${strong[@]}" & ;;
        *) echo "unknown variant $v" >&2; exit 2 ;;
    esac
done
wait

# pack: per run last.pt (to resume on another machine), best.pt without its optimizer state
# (a returned file may hold at most 16 MiB), metrics and the compressed log
for r in $variants; do
    gzip -c "$runs/$r.log" >"$runs/$r.log.gz"
    "$py" - "$runs/$r/best.pt" "$runs/$r/best-model.pt" <<'PY' || true
import sys, torch
ck = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
ck.pop("optimizer", None)
torch.save(ck, sys.argv[2])
PY
    tar cf "$out/$r.tar" -C "$runs" "$r.log.gz" "$r/last.pt" "$r/best-model.pt" "$r/metrics.csv" \
        "$r/history.json" "$r/args.json" 2>/dev/null || true
done
grep -h "time budget\|re-timed\|done:" "$runs"/*.log || true
for r in $variants; do echo "$r: $(tail -1 "$runs/$r/metrics.csv" 2>/dev/null | cut -d, -f1-7)"; done
echo "session: $(( $(date +%s) - t0 )) s"
