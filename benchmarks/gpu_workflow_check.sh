#!/usr/bin/env bash
# The workflow's reconstruct_gpu rule on a CUDA machine, through Snakemake (not only the library):
#   1. installs Snakemake and the Python packages the workflow needs that the machine lacks from
#      the wheelhouse .whl/ (no network: pip --no-index into $SITE, default /tmp/site),
#   2. runs `snakemake --cores all --config 'reconstruct={engine: gpu}'` for one default sample's
#      reconstruction (simulate, ingest, parallax, calibrate on the CPU, then reconstruct_gpu),
#   3. prints the rule's log and the numbers of reconstruction.h5 (rule, FFT library, iterations,
#      seconds per iteration, error history), checks that the GPU rule made it, and writes
#      summary.json.
# Usage: benchmarks/gpu_workflow_check.sh [OUT_DIR]   (run from the repository root; needs numpy,
# scipy, numba, h5py, scikit-image, matplotlib, pyyaml, scikit-learn and cupy installed, and .whl/
# (made by benchmarks/make_gpu_wheelhouse.sh);
# msptycho is taken from src/). The whole script ends within TOTAL_TIMEOUT seconds (default 400).
# Exit status 0 only when reconstruct_gpu produced a complete reconstruction with cuFFT.
set -u -o pipefail
out=${1:-${OUT:-/tmp/gpu_wf}}
sample=${SAMPLE:-pristine}
site=${SITE:-/tmp/site}
py=${PYTHON:-python3}
mkdir -p "$out"
deadline=$((SECONDS + ${TOTAL_TIMEOUT:-400}))
left() { local s=$((deadline - SECONDS - $1)); [ "$s" -gt 5 ] && echo "$s" || echo 5; }   # seconds left, $1 kept back
step() { echo "== $* ($(date +%T), ${SECONDS}s)"; }
target=results/$sample/05_reconstruct/reconstruction.h5

step machine
timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/machine.txt"
echo "cores $(nproc)" | tee -a "$out/machine.txt"

step wheels
ls .whl/*.whl >/dev/null || { echo "no wheelhouse .whl/ here (it is git-ignored: carry it)"; exit 2; }
timeout "$(left 300)" $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl 2>&1 | grep -v -i "warning\|already exists" | tail -5
export PYTHONPATH="$site:$PWD/src" PYTHONUNBUFFERED=1

step versions
timeout "$(left 300)" $py - <<'EOF' 2>&1 | tee -a "$out/machine.txt"
import sys
from importlib import metadata
print("python", sys.version.split()[0])
for d in ("snakemake", "jsonschema", "bayesian-optimization", "pulp", "pydantic", "sqlalchemy", "numpy", "scipy",
          "numba", "h5py", "scikit-image", "scikit-learn", "matplotlib", "pyyaml", "packaging",
          "typing-extensions", "cupy-cuda13x", "cupy-cuda12x"):
    try:
        print(f"  {d} {metadata.version(d)}")
    except metadata.PackageNotFoundError:
        print(f"  {d} -")
import snakemake, jsonschema, bayes_opt, msptycho  # noqa: E401 - fail here, not inside a job
print("snakemake from", snakemake.__file__, "| msptycho from", msptycho.__file__)
try:
    import cupy
    print("cupy", cupy.__version__, "devices", cupy.cuda.runtime.getDeviceCount())
except Exception as e:  # noqa: BLE001
    print("cupy FAILED:", e)
EOF
[ "${PIPESTATUS[0]}" = 0 ] || { echo "a package is missing (above): not running the workflow"; exit 3; }

step "snakemake $target (engine gpu)"
# --forcerun: a second run on the same machine redoes reconstruct_gpu, reusing the upstream outputs
cmd=($py -m snakemake --cores all --config 'reconstruct={engine: gpu}' --forcerun reconstruct_gpu
     --show-failed-logs $target)
printf "%q " "${cmd[@]}"; echo
timeout -k 10 "$(left 40)" "${cmd[@]}" > "$out/snakemake.log" 2>&1
rc=$?
echo "snakemake exit status $rc"
grep -E "^(rule|localrule) |Finished jobid|[Ee]rror|Exception|steps \(" "$out/snakemake.log" | tail -40

step "logs/$sample (first/last line of each)"
for f in simulate ingest parallax calibrate; do
    [ -f "logs/$sample/$f.log" ] && { echo "-- $f"; head -1 "logs/$sample/$f.log" | cut -c1-200; tail -1 "logs/$sample/$f.log" | cut -c1-200; }
done
step "logs/$sample/reconstruct.log (tail)"
tail -20 "logs/$sample/reconstruct.log" 2>/dev/null | cut -c1-250
for f in reconstruct calibrate simulate parallax; do
    [ -f "logs/$sample/$f.log" ] && cp "logs/$sample/$f.log" "$out/$f.log"
done
[ -f "results/$sample/05_reconstruct/convergence.png" ] && cp "results/$sample/05_reconstruct/convergence.png" "$out/"

step summary
timeout "$(left 0)" $py - "$target" "$out/summary.json" "$sample" "$rc" "$out/snakemake.log" <<'EOF'
import datetime as dt, json, math, os, re, sys
target, dest, sample, rc, smk_log = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
s = {"sample": sample, "target": target, "snakemake_exit": rc, "checks": {}}

def job_seconds(path):
    """Wall seconds of each job this run executed, from Snakemake's own time stamps."""
    start, took, stamp = {}, {}, None
    try:
        for line in open(path):
            m = re.match(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$", line.strip())
            if m:
                stamp = dt.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
            elif (m := re.match(r"^(?:local)?rule (\w+):$", line.strip())) and stamp:
                start[m.group(1)] = stamp
            elif (m := re.search(r"Finished jobid: \d+ \(Rule: (\w+)\)", line)) and m.group(1) in start:
                took[m.group(1)] = (stamp - start[m.group(1)]).total_seconds()
    except OSError:
        pass
    return took

s["job_seconds"] = job_seconds(smk_log)
try:
    s["reconstruct_log_lines"] = [l.rstrip() for l in open(f"logs/{sample}/reconstruct.log")
                                  if "backend" in l or "GiB" in l or "Error" in l][:6]
except OSError:
    pass
if os.path.exists(target):
    import h5py
    import numpy as np
    with h5py.File(target, "r") as f:
        a = f.attrs
        params = json.loads(a["parameters"])
        sec = f["history/seconds"][...]
        err = f["history/error"][...]
        s.update(rule=str(a.get("provenance_rule")), fft_library=str(a.get("fft_library")),
                 engine_GiB=float(a.get("engine_GiB", float("nan"))), iterations_done=int(a["iterations_done"]),
                 num_iterations=int(params["num_iterations"]), batch_size=params.get("batch_size"),
                 num_slices=params.get("num_slices"), potential_shape=list(f["potential_VA"].shape),
                 scan_shape=[int(v) for v in f["positions_A"].attrs["scan_shape"]],
                 versions=json.loads(a.get("provenance_versions", "{}")),
                 seconds_per_iteration=[round(float(x), 4) for x in sec],
                 seconds_per_iteration_median=float(np.median(sec)),
                 seconds_per_iteration_after_first=float(np.median(sec[1:])) if len(sec) > 1 else None,
                 error=[float(x) for x in err],
                 potential_finite=bool(np.isfinite(f["potential_VA"][...]).all()))
    s["checks"] = {
        "made_by_reconstruct_gpu": s["rule"] == "reconstruct_gpu",
        "cufft": s["fft_library"] == "cufft",
        "all_iterations": s["iterations_done"] == s["num_iterations"] == len(err),
        "error_finite": bool(np.isfinite(err).all()),
        "error_fell": bool(len(err) > 1 and err[-1] < err[0]),
        "potential_finite": s["potential_finite"],
    }
else:
    s["checks"] = {"reconstruction_exists": False}
s["ok"] = rc == 0 and all(s["checks"].values())
json.dump(s, open(dest, "w"), indent=1)
for k in ("rule", "fft_library", "engine_GiB", "iterations_done", "num_iterations", "potential_shape", "scan_shape",
          "seconds_per_iteration_median", "seconds_per_iteration_after_first", "job_seconds"):
    if k in s:
        print(f"{k}: {s[k]}")
if "error" in s:
    print("error per iteration:", " ".join(f"{e:.5f}" for e in s["error"]))
    print("seconds per iteration:", " ".join(f"{x:.3f}" for x in s["seconds_per_iteration"]))
print("checks:", s["checks"])
print("RESULT:", "PASS" if s["ok"] else "FAIL")
sys.exit(0 if s["ok"] else 1)
EOF
status=$?
step done
ls "$out"
exit $status
