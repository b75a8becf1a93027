# Shared by gpu_session.sh and gpu_distill.sh (sourced, not run): the
# sitting's clock, the one-time dataset decode, one train.py job, and the
# packing of a finished run. Expects data, runs, out and total to be set.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
t0=$(date +%s)
# seconds left of the sitting's budget
left() { echo $(( total - ($(date +%s) - t0) )); }

mkdir -p "$runs" "$out"
# decode the dataset once (cached as .npz) rather than in every job
"$py" "$here/data.py" --data "$data" --splits train val

common=(--data "$data" --device "${DEVICE:-cuda}" --patience 0 --epochs 400 --threads 2)

# train_job NAME BUDGET_SECONDS [train.py args...]: one run, its log appended to RUNS/NAME.log;
# with JOB_TIMEOUT=S set, stopped after S seconds (last.pt keeps every finished epoch)
train_job() {
    local name=$1 budget=$2; shift 2
    ${JOB_TIMEOUT:+timeout "$JOB_TIMEOUT"} "$py" "$here/train.py" "${common[@]}" --name "$name" \
        --out "$runs/$name" --time-budget "$budget" "$@" >>"$runs/$name.log" 2>&1
}

# pack_run NAME: the run's best checkpoint, metrics, arguments and log as OUT/NAME.tar
pack_run() {
    tar cf "$out/$1.tar" -C "$runs" "$1.log" "$1/best.pt" "$1/metrics.csv" "$1/history.json" "$1/args.json" \
        2>/dev/null || true
}
