#!/usr/bin/env bash
# Paper-scale synthetic six-job sweep on one GPU, timed per job, then `python -m src.bench trainer=gpu`.
#
#   bash scripts/gpu_bench.sh                    # on a GPU machine (goal: sweep <= 5 min on one H100)
#   GPU_BENCH_DRY=1 bash scripts/gpu_bench.sh    # dry run on CPU with tiny sizes (proves the script)
#
# Stages: 0 environment (wheels from .whl/ if present, versions, GPU) -> 1 cohort generation (parallel)
# -> 2 preprocessing of 3 phases x strong/weak into the cache (parallel) -> 3 the six jobs, timed, with a
# throughput callback (samples/s, share of training time fetching batches) and nvidia-smi sampling:
# GPU_BENCH_MODE=concurrent (default) runs them at once as one multirun (experiment=gpu_sweep),
# sequential one process after the other -> 4 scripts/step_profile.py (anatomy of a step, concurrency
# scaling) -> 5 python -m src.bench (framework vs bare loop) -> 6 summary table. Logs, per-job outputs and JSON go to $OUT/gpu_bench
# when OUT is set (else outputs/gpu_bench/<time>). Data and cache go to $GPU_BENCH_WORK (default: under
# the log folder's parent, reused by a rerun). Environment knobs: GPU_BENCH_WORKERS (CPU processes for
# generation/preprocessing; default: all CPUs), GPU_BENCH_EPOCHS (default 50), GPU_BENCH_JOBS (default
# "UP:strong UP:weak CMP:strong CMP:weak NP:strong NP:weak"; concurrent mode runs the product of the
# listed phases and supervisions), GPU_BENCH_MODE (concurrent | sequential), GPU_BENCH_STAGES (default
# "prepare sweep profile bench"; also: layout = time both memory layouts first and run the sweep with the
# faster callbacks.speed layout, warm = the sweep again over the same data and cache, kfold = the jobs in
# 5 folds each, concurrent mode), GPU_BENCH_PROCS
# (step_profile concurrency, default 1,6),
# GPU_BENCH_SECTIONS / GPU_BENCH_SUPS (src.bench sections and supervisions), GPU_BENCH_EXTRA (extra
# Hydra overrides).
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
MODE=${GPU_BENCH_MODE:-concurrent}
STAGES=${GPU_BENCH_STAGES:-"prepare sweep profile bench"}
has() { [[ " $STAGES " == *" $1 "* ]]; }
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
          synthetic.n_patients=306 "synthetic.shape=[512,512,40]"
          "preprocess.roi_size=[32,32,32]" "preprocess.slice_size=[256,256]")
  BENCH=(bench.n_patients=48 bench.train.steps=30 bench.train.repeats=3 bench.startup.repeats=3
         "bench.memory.sizes=[50,150,306]" bench.memory.parallel=3)
fi
# shellcheck disable=SC2206
COMMON+=("paths.data_dir=$WORK/data" "paths.cache_dir=$WORK/cache" ${GPU_BENCH_EXTRA:-})
# processes for generation/preprocessing: all CPUs where one process does it (prepare, sequential jobs,
# bench); the concurrent sweep keeps experiment=gpu_sweep's auto (all CPUs for the shared cohort,
# CPUs / jobs for each job's own preprocessing)
W=("data.workers=$WORKERS")

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

if has prepare; then
  stage "1+2 cohort generation and preprocessing (${WORKERS} processes)"
  T0=$(now_ms)
  $PY -m src.bench --prepare "${COMMON[@]}" "${W[@]}" 2>&1 | tee "$LOG/prepare.log" | grep -E "^(cohort|preprocess|check|\{)"
  echo "{\"prepare_s\": $(secs "$T0")}" > "$LOG/prepare.json"
fi

# 2b layout: time the bf16 step of both networks in each memory layout and run the sweep with the layout of
# the least summed ms/step (the same rule a user would apply to scripts/step_profile.py's table):
# 2d = channels-last for 2D networks only (callbacks.speed.channels_last=true, channels_last_dims [2]: the
# GPU default), 2d+3d = also channels-last-3d for the 3D network, none = no channels-last; without timings
# (a failed profile, or a CPU dry run) the config's own setting stays
if has layout; then
  stage "2b memory layout (scripts/step_profile.py, bf16: NCDHW vs NDHWC 3D, NHWC vs NCHW 2D)"
  LP=(--procs "" --steps 60 --warmup 15 --variants bf16,bf16+cl3d,bf16+nchw --out "$LOG/layout_profile.json")
  [ "$DRY" = "1" ] && LP=(--dry --procs "" --out "$LOG/layout_profile.json")
  $PY scripts/step_profile.py "${LP[@]}" 2>&1 | tee "$LOG/layout_profile.log" | grep -vi warn || echo "layout profile failed"
  CL=$($PY - "$LOG/layout_profile.json" <<'PYEOF' 2>/dev/null || echo default
import json, sys
ms = {(r["net"], r["variant"]): r["ms_per_step"] for r in json.load(open(sys.argv[1])) if "ms_per_step" in r}
options = {"2d": [("strong", "bf16"), ("weak", "bf16")], "2d+3d": [("strong", "bf16+cl3d"), ("weak", "bf16")],
           "none": [("strong", "bf16"), ("weak", "bf16+nchw")]}
cost = {k: sum(ms[c] for c in v) for k, v in options.items() if all(c in ms for c in v)}
print(min(cost, key=cost.get) if cost else "default")
PYEOF
)
  case "$CL" in
    2d)    LAYOUT=(callbacks.speed.channels_last=true "callbacks.speed.channels_last_dims=[2]") ;;
    2d+3d) LAYOUT=(callbacks.speed.channels_last=true "callbacks.speed.channels_last_dims=[2,3]") ;;
    none)  LAYOUT=(callbacks.speed.channels_last=false) ;;
    *)     CL=default; LAYOUT=() ;;
  esac
  echo "{\"layout\": \"$CL\", \"layout_overrides\": \"${LAYOUT[*]}\"}" > "$LOG/layout.json"
  stage "2b layout $CL for the sweep: ${LAYOUT[*]:-callbacks.speed as configured}"
  COMMON+=("${LAYOUT[@]}")
fi

# one timed sweep into $1 (log $2), its wall seconds into the variable named $3: the six jobs at once
# (concurrent) or one after the other (sequential)
run_sweep() {
  local sweep=$1 slog=$2 t0
  mkdir -p "$sweep"
  t0=$(now_ms)
  if [ "$MODE" = "concurrent" ]; then
    phases=$(for j in $JOBS; do echo "${j%%:*}"; done | awk '!s[$0]++' | paste -sd, -)
    sups=$(for j in $JOBS; do echo "${j##*:}"; done | awk '!s[$0]++' | paste -sd, -)
    n=$(echo $JOBS | wc -w)
    CONC=(experiment=gpu_sweep "data.concurrent_jobs=$n")
    [ "$DRY" = "1" ] && CONC=(hydra/launcher=joblib "hydra.launcher.n_jobs=$n" "data.concurrent_jobs=$n" data.workers=auto)
    # the multirun's own folder layout: <n>_<phase>_<supervision>
    $PY -m src.train -m "phase=$phases" "supervision=$sups" "${COMMON[@]}" "${CONC[@]}" "${TP[@]}" \
      "${SWEEP_EXTRA[@]}" "hydra.sweep.dir=$sweep" > "$slog" 2>&1 || { echo "sweep failed; last lines:"; tail -n 40 "$slog"; }
    for d in "$sweep"/*_*_*/; do
      [ -f "$d/train.log" ] || continue
      # per job: first and last line of its own log (start of the job -> its end)
      "$PY" - "$d" <<'PYEOF'
import json, sys, datetime as dt
from pathlib import Path
d = Path(sys.argv[1]); lines = [l for l in (d / "train.log").read_text().splitlines() if l.startswith("[")]
t = [dt.datetime.strptime(l[1:24], "%Y-%m-%d %H:%M:%S,%f") for l in (lines[0], lines[-1])]
(d / "wall.json").write_text(json.dumps({"job": d.name, "wall_s": (t[1] - t[0]).total_seconds(), "from": "train.log"}))
PYEOF
    done
  else
    local i=0 job phase sup dir t1
    for job in $JOBS; do
      phase=${job%%:*}; sup=${job##*:}
      dir="$sweep/${i}_${phase}_${sup}"
      stage "3 job $i: $phase/$sup -> $dir"
      t1=$(now_ms)
      $PY -m src.train "phase=$phase" "supervision=$sup" "${COMMON[@]}" "${W[@]}" "${TP[@]}" "hydra.run.dir=$dir" \
        > "$dir.log" 2>&1 || { echo "job $phase/$sup failed; last lines:"; tail -n 30 "$dir.log"; exit 1; }
      echo "{\"job\": \"${phase}_${sup}\", \"wall_s\": $(secs "$t1")}" > "$dir/wall.json"
      grep -E "^throughput:" "$dir.log" | tail -n 1 || true
      i=$((i + 1))
    done
    $PY -m src.report "$sweep" > "$sweep.report.log" 2>&1 || echo "report failed (see $sweep.report.log)"
  fi
  printf -v "$3" '%s' "$(secs "$t0")"
}

TP=("+callbacks.throughput._target_=src.callbacks.throughput.ThroughputMonitor"
    "+callbacks.throughput.output_dir=\${paths.output_dir}")
SWEEP="$LOG/sweep"
SWEEP_S=0
WARM_S=0
KFOLD_S=0
SWEEP_EXTRA=()
if has sweep || has warm || has kfold; then
  SMI_PID=""
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
      > "$LOG/gpu_util.csv" 2>/dev/null & SMI_PID=$!
  fi
  if has sweep; then
    stage "3 sweep ($MODE): ${JOBS} (${EPOCHS} epochs each)"
    run_sweep "$SWEEP" "$LOG/sweep.log" SWEEP_S
    stage "3 sweep done in ${SWEEP_S} s"
  fi
  # warm: the same sweep again over the same data and cache (nothing to generate, validate or preprocess)
  if has warm; then
    stage "3w warm sweep (same data and cache)"
    run_sweep "$LOG/sweep_warm" "$LOG/sweep_warm.log" WARM_S
    stage "3w warm sweep done in ${WARM_S} s"
  fi
  # kfold: the same jobs in 5 folds each (data.split.scheme=kfold), jobs at once as the sweep (concurrent mode)
  if has kfold; then
    stage "3k k-fold sweep: ${JOBS} x 5 folds (${EPOCHS} epochs each, same data and cache)"
    SWEEP_EXTRA=(data.split.scheme=kfold "data.split.fold=0,1,2,3,4")
    run_sweep "$LOG/sweep_kfold" "$LOG/sweep_kfold.log" KFOLD_S
    SWEEP_EXTRA=()
    stage "3k k-fold sweep done in ${KFOLD_S} s"
  fi
  [ -n "$SMI_PID" ] && kill "$SMI_PID" 2>/dev/null || true
fi

if has profile; then
  stage "4 scripts/step_profile.py"
  PROF=(--procs "${GPU_BENCH_PROCS:-1,6}" --out "$LOG/step_profile.json")
  [ "$DRY" = "1" ] && PROF=(--dry --procs 1,2 --out "$LOG/step_profile.json")
  $PY scripts/step_profile.py "${PROF[@]}" 2>&1 | tee "$LOG/step_profile.log" | grep -vi warn || echo "step profile failed"
fi

if has bench; then
  # GPU_BENCH_SECTIONS (e.g. "[startup,train]") and GPU_BENCH_SUPS ("strong weak") narrow this stage
  [ -n "${GPU_BENCH_SECTIONS:-}" ] && BENCH+=("bench.sections=$GPU_BENCH_SECTIONS")
  for sup in ${GPU_BENCH_SUPS:-strong}; do
    stage "5 python -m src.bench supervision=$sup"
    $PY -m src.bench "${COMMON[@]}" "${W[@]}" "supervision=$sup" "${BENCH[@]}" "bench.out=$LOG/bench_$sup.json" \
      > "$LOG/bench_$sup.log" 2>&1 || { echo "src.bench failed; last lines:"; tail -n 30 "$LOG/bench_$sup.log"; }
    sed -n '/^machine /,$p' "$LOG/bench_$sup.log"
    BENCH+=("bench.sections=[train]")  # start-up, preprocessing and memory once
  done
fi

stage "6 summary"
$PY - "$SWEEP" "$SWEEP_S" "$MODE" "$WARM_S" "$KFOLD_S" <<'EOF' 2>&1 | tee "$LOG/summary.md"
import json, sys
from pathlib import Path
sweep, total, mode, warm = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
kfold = float(sys.argv[5])
log = sweep.parent


def table(sweep: Path, title: str) -> list:
    rows = []
    print(f"| job ({title}) | wall s | train samples/s | training TFLOP/s | fetch % of train time | epochs | test AUC |")
    print("|---|---|---|---|---|---|---|")
    jobs = [p for p in sweep.iterdir() if (p / "wall.json").exists()] if sweep.is_dir() else []
    for d in sorted(jobs, key=lambda p: (int(p.name.split("_")[0]) if p.name.split("_")[0].isdigit() else 0, p.name)):
        wall = json.loads((d / "wall.json").read_text())
        tp = json.loads((d / "throughput.json").read_text()) if (d / "throughput.json").exists() else {}
        met = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").exists() else {}
        rows.append({"job": d.name, **wall, **{k: v for k, v in tp.items() if k != "epoch_s"},
                     "test_auc": met.get("test_auc")})
        print(f"| {d.name} | {wall.get('wall_s', float('nan')):.1f} | {tp.get('samples_per_s', float('nan')):.0f} | "
              f"{tp.get('tflops') or float('nan'):.1f} | "
              f"{100 * tp.get('data_wait_fraction', float('nan')):.1f} | {tp.get('epochs')} | "
              f"{met.get('test_auc', float('nan')):.3f} |")
    if rows:  # jobs at once share the device: their sums are its rates
        print(f"| sum over the jobs | | {sum(r.get('samples_per_s') or 0 for r in rows):.0f} | "
              f"{sum(r.get('tflops') or 0 for r in rows):.1f} | | | |")
    return rows


out = {"mode": mode, "sweep_s": total, "jobs": table(sweep, mode)}
if (log / "layout.json").exists():
    out.update(json.loads((log / "layout.json").read_text()))
if warm:
    print()
    out.update({"warm_sweep_s": warm, "warm_jobs": table(log / "sweep_warm", f"{mode}, warm cache")})
if kfold:
    print()
    out.update({"kfold_sweep_s": kfold, "kfold_jobs": table(log / "sweep_kfold", f"{mode}, 5 folds")})
if (log / "prepare.json").exists():
    out.update(json.loads((log / "prepare.json").read_text()))
    print(f"\ncohort generation + preprocessing (all CPUs): {out['prepare_s']:.1f} s")
print(f"sweep wall time: {total:.1f} s ({total / 60:.2f} min)")
if warm:
    print(f"warm sweep wall time (same data and cache): {warm:.1f} s ({warm / 60:.2f} min)")
if kfold:
    print(f"k-fold sweep wall time (5 folds, same data and cache): {kfold:.1f} s ({kfold / 60:.2f} min)")
util = log / "gpu_util.csv"
if util.exists() and util.stat().st_size:
    vals = [[float(v) for v in ln.split(",")[1:3]] for ln in util.read_text().splitlines() if ln.count(",") >= 2]
    busy = [u for u, _ in vals]
    if busy:
        out["gpu_util_mean"] = sum(busy) / len(busy)
        out["gpu_mem_max_mib"] = max(m for _, m in vals)
        print(f"GPU utilisation during the sweep (nvidia-smi, every 0.5 s): mean {out['gpu_util_mean']:.0f} %, "
              f"memory max {out['gpu_mem_max_mib']:.0f} MiB")
(log / "summary.json").write_text(json.dumps(out, indent=2))
EOF
stage "done: $LOG"
