#!/usr/bin/env bash
# One GPU sitting of the model search: two large teachers and two plain
# students trained side by side on one CUDA GPU, then students distilled from
# the two teachers. Every run is an ordinary `train.py` invocation (its exact
# arguments, and the epoch count --time-budget chose, are in each run's
# args.json / checkpoint), so any result can be reproduced on its own, on a GPU
# or on a CPU, with that command.
#
# usage: training/gpu_session.sh DATA_ROOT RUNS_DIR OUT_DIR [TOTAL_SECONDS]
#   DATA_ROOT  FER2013 root (Kaggle folders, packed/ or fer2013.csv)
#   RUNS_DIR   where the run directories go
#   OUT_DIR    where the packed results go (students' checkpoints, teachers
#              as float16, logs)
# TOTAL_SECONDS (default 540) is the wall-clock budget of the whole sitting.
# DEVICE, TEACHER_STAGES and STUDENT_WIDTH override the defaults (a CPU smoke
# test: DEVICE=cpu TEACHER_STAGES=8x1,16x1 STUDENT_WIDTH=0.25 ... 120).
set -euo pipefail

data=$1 runs=$2 out=$3 total=${4:-540}
# shellcheck source=gpu_common.sh
. "$(dirname "$0")/gpu_common.sh"

teacher_budget=$(( $(left) * 45 / 100 ))

train_job teacher_a "$teacher_budget" --stages "${TEACHER_STAGES:-64x2,128x2,256x3,512x3}" --dropout 0.4 --seed 11 &
pa=$!
train_job teacher_b "$teacher_budget" --stages "${TEACHER_STAGES:-64x2,128x2,256x3,512x3}" --dropout 0.4 --seed 12 &
pb=$!
train_job student_plain $(( $(left) - 25 )) --width "${STUDENT_WIDTH:-1.0}" --seed 1 &
pc=$!
train_job student_strongaug $(( $(left) - 25 )) --width "${STUDENT_WIDTH:-1.0}" --seed 2 --crop-pad 6 --rotate 15 --zoom 0.15 --dropout 0.4 &
pd=$!
wait $pa $pb || true
grep -h "done:" "$runs"/teacher_*.log || true

teachers=("$runs/teacher_a/best.pt" "$runs/teacher_b/best.pt")
train_job student_kd7 $(( $(left) - 25 )) --width "${STUDENT_WIDTH:-1.0}" --seed 3 --teacher "${teachers[@]}" --kd-alpha 0.7 --kd-temp 4 &
pe=$!
train_job student_kd9 $(( $(left) - 25 )) --width "${STUDENT_WIDTH:-1.0}" --seed 4 --teacher "${teachers[@]}" --kd-alpha 0.9 --kd-temp 3 &
pf=$!
wait $pc $pd $pe $pf || true

# pack: students whole (small), teachers as float16 weights + config
for r in student_plain student_strongaug student_kd7 student_kd9; do pack_run "$r"; done
for t in teacher_a teacher_b; do
    "$py" - "$runs/$t/best.pt" "$out/$t.fp16.pt" <<'EOF' || true
import sys, torch
ck = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
keep = {k: ck[k] for k in ("model_config", "epoch", "val_acc", "val_acc_flip", "argv", "args", "params", "macs")}
keep["model"] = {k: (v.half() if v.is_floating_point() else v) for k, v in ck["model"].items()}
torch.save(keep, sys.argv[2])
EOF
done
tar cf "$out/logs.tar" -C "$runs" $(cd "$runs" && ls ./*.log ./*/metrics.csv ./*/args.json 2>/dev/null)
grep -h "done:\|time budget" "$runs"/*.log || true
echo "session: $(( $(date +%s) - t0 )) s"
