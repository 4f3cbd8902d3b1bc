"""The cluster profile on a real single-node Slurm (started here from Debian's packages).

CI installs slurmctld, slurmd, slurm-client and munge (.ci/run); elsewhere the test skips with
the reason. The daemons are torn down by their PID files whatever happens.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "slurm-local.sh"

needs_slurm = pytest.mark.skipif(
    not (shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged")
         and os.geteuid() == 0),
    reason="needs root and Debian's slurmctld/slurmd/munge packages (installed by .ci/run)",
)


@pytest.fixture
def slurm(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    up = subprocess.run(["bash", str(TOOL), "up", str(state)], capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield state
    finally:
        subprocess.run(["bash", str(TOOL), "down", str(state)], capture_output=True, text=True, timeout=60)


def _tiny_config(tmp_path):
    from test_workflow import TINY

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["samples"] = {"tiny": {"source": "synthetic", "preset": "cracked", "simulation": TINY}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "config.yaml"


TARGETS = ["results/tiny/02_drift/haadf.h5", "results/tiny/03_parallax/parallax.h5"]
# what this test asks of Slurm per rule (the profile's paper-scale sizes do not fit a 2-core CI node)
ASK = {"simulate": (1500, 2), "ingest": (1200, 1), "drift_correct": (1100, 1), "parallax": (1300, 1)}


def _run(workdir, cfg, *extra, timeout=600):
    cmd = ["timeout", "-k", "30", str(timeout), sys.executable, "-m", "snakemake",
           "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(cfg), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60)


@needs_slurm
@pytest.mark.workflow
def test_profile_runs_every_rule_as_a_slurm_job(slurm, tmp_path):
    cfg = _tiny_config(tmp_path)
    cluster_dir, local_dir = tmp_path / "cluster", tmp_path / "local"
    # Without slurmdbd, sacct fails and the plugin would poll forever: use squeue in CI.
    r = _run(cluster_dir, cfg, "--profile", str(ROOT / "workflow/profiles/slurm"),
             "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
             "--jobs", "2",
             "--set-resources", *[f"{r}:{k}={v}" for r, (mb, c) in ASK.items()
                                  for k, v in (("mem_mb", mb), ("cpus_per_task", c))],
             "--set-threads", *[f"{r}={c}" for r, (mb, c) in ASK.items()],
             "--", *TARGETS)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]

    # snakemake's own record of which rule went to which Slurm job ...
    submitted = {int(m.group(1)): m.group(2) for m in
                 re.finditer(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/", out)}
    assert set(submitted.values()) == {"simulate", "ingest", "drift_correct", "parallax"}, out[-3000:]

    # ... against Slurm's: every job completed, with the memory and cores it asked for
    comp = (slurm / "jobcomp.txt").read_text().splitlines()
    records = {int(re.search(r"JobId=(\d+)", l).group(1)): l for l in comp}
    for jobid, rule in submitted.items():
        rec = records[jobid]
        assert "JobState=COMPLETED" in rec, rec
        mb, cpus = ASK[rule]
        assert f"mem={mb}M" in rec and f"cpu={cpus}," in rec, (rule, rec)

    # the same results as a local run
    r = _run(local_dir, cfg, "--cores", "2", *TARGETS)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    for rel, name in (("results/tiny/01_ingest/datacube.h5", "datacube"), ("results/tiny/02_drift/haadf.h5", "image"),
                      ("results/tiny/00_raw/truth.h5", "potential_VA")):
        with h5py.File(cluster_dir / rel) as a, h5py.File(local_dir / rel) as b:
            np.testing.assert_array_equal(a[name][...], b[name][...])
    with h5py.File(cluster_dir / TARGETS[1]) as a, h5py.File(local_dir / TARGETS[1]) as b:
        assert a.attrs["defocus_A"] == pytest.approx(b.attrs["defocus_A"], rel=1e-6)
