#!/usr/bin/env bash
# Paper-scale synthetic six-job sweep on one GPU, timed per job, then `python -m src.bench trainer=gpu`.
#
#   bash scripts/gpu_bench.sh                    # on a GPU machine (goal: sweep <= 5 min on one H100)
#   GPU_BENCH_DRY=1 bash scripts/gpu_bench.sh    # dry run on CPU with tiny sizes (proves the script)
#
# Stages: 0 environment (wheels from .whl/ if present, versions, GPU) -> 1 cohort generation (parallel)
# -> 2 preprocessing of 3 phases x strong/weak into the cache (parallel) -> 3 the six jobs, one process
# each, timed, with a throughput callback (samples/s, fraction of step time waiting for data)
# -> 4 python -m src.bench -> 5 summary table. Logs, per-job outputs and JSON go to $OUT/gpu_bench
# when OUT is set (else outputs/gpu_bench/<time>). Data and cache go to $GPU_BENCH_WORK (default: under
# the log folder's parent, reused by a rerun). Environment knobs: GPU_BENCH_WORKERS (CPU processes for
# generation/preprocessing; default: all CPUs), GPU_BENCH_EPOCHS (default 50), GPU_BENCH_JOBS (default
# "UP:strong UP:weak CMP:strong CMP:weak NP:strong NP:weak"), GPU_BENCH_EXTRA (extra Hydra overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DRY=${GPU_BENCH_DRY:-0}
STAMP=$(date +%Y%m%d_%H%M%S)
LOG=${OUT:+$OUT/gpu_bench}
LOG=${LOG:-outputs/gpu_bench/$STAMP}
mkdir -p "$LOG"
LOG=$(cd "$LOG" && pwd)
WORK=${GPU_BENCH_WORK:-$(dirname "$LOG")/gpu_bench_work}
mkdir -p "$WORK"
WORKERS=${GPU_BENCH_WORKERS:-$(nproc)}
JOBS=${GPU_BENCH_JOBS:-"UP:strong UP:weak CMP:strong CMP:weak NP:strong NP:weak"}
export WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1

stage() { echo "== [$(date +%T)] $*" | tee -a "$LOG/stages.log"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { local ms=$(( $(now_ms) - $1 )); printf "%d.%03d" $((ms / 1000)) $((ms % 1000)); }

if [ "$DRY" = "1" ]; then
  # tiny CPU run: same stages, same code paths (trainer=cpu; the fast path resolves to its CPU settings)
  EPOCHS=${GPU_BENCH_EPOCHS:-2}
  COMMON=(experiment=smoke trainer=cpu "trainer.max_epochs=$EPOCHS")
  BENCH=(bench.n_patients=20 bench.train.steps=3 bench.train.repeats=1 bench.startup.repeats=1
         "bench.preprocess.phases=[CMP]" "bench.memory.sizes=[10,20]" bench.memory.parallel=2)
else
  # paper scale: 306 patients (165 low / 141 high), 512 x 512 x 40, ROI 32^3, slices 256^2, 50 epochs
  EPOCHS=${GPU_BENCH_EPOCHS:-50}
  COMMON=(trainer=gpu "trainer.max_epochs=$EPOCHS" trainer.enable_progress_bar=false
          data.synthetic.n_patients=306 "data.synthetic.shape=[512,512,40]"
          "preprocess.roi_size=[32,32,32]" "preprocess.slice_size=[256,256]")
  BENCH=(bench.n_patients=48 bench.train.steps=30 bench.train.repeats=3 bench.startup.repeats=3
         "bench.memory.sizes=[50,150,306]" bench.memory.parallel=3)
fi
# shellcheck disable=SC2206
COMMON+=("paths.data_dir=$WORK/data" "paths.cache_dir=$WORK/cache" "data.workers=$WORKERS" ${GPU_BENCH_EXTRA:-})

stage "0 environment (log: $LOG, data/cache: $WORK, workers: $WORKERS, dry: $DRY)"
if [ -d .whl ] && compgen -G ".whl/*.whl" > /dev/null; then
  stage "0 installing wheels from .whl/ (--no-index)"
  $PY -m pip install --no-index --find-links .whl .whl/*.whl 2>&1 | tail -n 3 \
    || $PY -m pip install --no-index --no-deps .whl/*.whl 2>&1 | tail -n 3
fi
$PY - <<'EOF' 2>&1 | tee "$LOG/environment.txt"
import importlib, os, platform
mods = ["torch", "lightning", "torchmetrics", "hydra", "omegaconf", "monai", "SimpleITK", "nibabel", "pandas",
        "scipy", "sklearn", "statsmodels", "matplotlib", "MLstatkit", "wandb"]
missing = []
for m in mods:
    try:
        print(f"{m:14s} {getattr(importlib.import_module(m), '__version__', '?')}")
    except Exception as exc:  # report all, fail below on the required ones
        print(f"{m:14s} MISSING ({type(exc).__name__})"); missing.append(m)
import torch
print("python", platform.python_version(), "| cpus", os.cpu_count(), "| cuda", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
required = [m for m in missing if m not in ("wandb", "MLstatkit", "statsmodels", "matplotlib")]
if required:
    raise SystemExit(f"missing required modules: {required}")
EOF
if [ "$DRY" != "1" ]; then
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use GPU_BENCH_DRY=1 on CPU')"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG/environment.txt"
fi

stage "1+2 cohort generation and preprocessing (${WORKERS} processes)"
$PY -m src.bench --prepare "${COMMON[@]}" 2>&1 | tee "$LOG/prepare.log" | grep -E "^(cohort|preprocess|check|\{)"

stage "3 sweep: ${JOBS} (${EPOCHS} epochs each)"
SWEEP="$LOG/sweep"
mkdir -p "$SWEEP"
i=0
SWEEP_T0=$(now_ms)
for job in $JOBS; do
  phase=${job%%:*}; sup=${job##*:}
  dir="$SWEEP/${i}_${phase}_${sup}"
  stage "3 job $i: $phase/$sup -> $dir"
  t0=$(now_ms)
  $PY -m src.train "phase=$phase" "supervision=$sup" "${COMMON[@]}" "hydra.run.dir=$dir" \
    "+callbacks.throughput._target_=src.bench.throughput_monitor" "+callbacks.throughput.output_dir=$dir" \
    > "$dir.log" 2>&1 || { echo "job $phase/$sup failed; last lines:"; tail -n 30 "$dir.log"; exit 1; }
  echo "{\"job\": \"${phase}_${sup}\", \"wall_s\": $(secs "$t0")}" > "$dir/wall.json"
  grep -E "^throughput:" "$dir.log" | tail -n 1 || true
  i=$((i + 1))
done
SWEEP_S=$(secs "$SWEEP_T0")
stage "3 sweep done in ${SWEEP_S} s; report"
$PY -m src.report "$SWEEP" > "$LOG/report.log" 2>&1 || echo "report failed (see $LOG/report.log)"

stage "4 python -m src.bench"
$PY -m src.bench "${COMMON[@]}" "${BENCH[@]}" "bench.out=$LOG/bench.json" > "$LOG/bench.log" 2>&1 \
  || { echo "src.bench failed; last lines:"; tail -n 30 "$LOG/bench.log"; exit 1; }
sed -n '/^machine /,$p' "$LOG/bench.log"

stage "5 summary"
$PY - "$SWEEP" "$SWEEP_S" <<'EOF' 2>&1 | tee "$LOG/summary.md"
import json, sys
from pathlib import Path
sweep, total = Path(sys.argv[1]), float(sys.argv[2])
rows = []
print("| job | wall s | train samples/s | data wait % | epochs | test AUC |")
print("|---|---|---|---|---|---|")
for d in sorted(p for p in sweep.iterdir() if (p / "wall.json").exists()):
    wall = json.loads((d / "wall.json").read_text()) if (d / "wall.json").exists() else {}
    tp = json.loads((d / "throughput.json").read_text()) if (d / "throughput.json").exists() else {}
    met = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").exists() else {}
    rows.append({"job": d.name, **wall, **{k: v for k, v in tp.items() if k != "epoch_s"}, "test_auc": met.get("test_auc")})
    print(f"| {d.name} | {wall.get('wall_s', float('nan')):.1f} | {tp.get('samples_per_s', float('nan')):.0f} | "
          f"{100 * tp.get('data_wait_fraction', float('nan')):.1f} | {tp.get('epochs')} | {met.get('test_auc')} |")
print(f"\nsweep wall time: {total:.1f} s ({total / 60:.2f} min)")
(sweep.parent / "summary.json").write_text(json.dumps({"sweep_s": total, "jobs": rows}, indent=2))
EOF
stage "done: $LOG"
