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
    rng = np.random.default_rng(1)
    q = np.hypot(*np.meshgrid(np.arange(16) - 8, np.arange(16) - 8, indexing="ij"))
    data = rng.poisson(40 * (q <= 4) + 0.5, size=(4, 5, 16, 16)).astype(np.float32)
    np.save(tmp_path / "cube.npy", data)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["samples"] = {"tiny": {"source": "file", "format": "npy", "path": str(tmp_path / "cube.npy"),
                               "calibration": {"energy_eV": 300000.0, "semiangle_mrad": 25.0,
                                               "scan_step_A": 2.0, "mrad_per_pixel": 1.5}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "config.yaml"


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
             "--jobs", "2")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]

    # snakemake's own record of which rule went to which Slurm job ...
    submitted = {}
    rule = None
    for line in out.splitlines():
        m = re.match(r"\s*(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
        m = re.search(r"submitted with SLURM jobid (\d+)", line) or re.search(r"SLURM run ID .* jobid (\d+)", line)
        if m and rule:
            submitted[int(m.group(1))] = rule
    assert set(submitted.values()) == {"ingest", "provenance"}, out[-3000:]

    # ... against Slurm's: every job completed, with the memory the profile asked for
    comp = (slurm / "jobcomp.txt").read_text().splitlines()
    records = {int(re.search(r"JobId=(\d+)", l).group(1)): l for l in comp}
    profile = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
    for jobid, rule in submitted.items():
        rec = records[jobid]
        assert "JobState=COMPLETED" in rec, rec
        mem = profile["set-resources"].get(rule, {}).get("mem_mb")
        if mem is not None:
            assert f"mem={mem}M" in rec, (rule, rec)

    # the same results as a local run
    r = _run(local_dir, cfg, "--cores", "1")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    rel = "results/tiny/01_ingest/datacube.h5"
    with h5py.File(cluster_dir / rel) as a, h5py.File(local_dir / rel) as b:
        np.testing.assert_array_equal(a["datacube"][...], b["datacube"][...])
        assert dict(a["datacube"].attrs) .keys() == dict(b["datacube"].attrs).keys()
