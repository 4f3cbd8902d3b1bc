"""The workflow as a user runs it: lint, config validation, the DAG, and real runs of its rules."""
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def snakemake(*args, cwd=ROOT, timeout=900):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def write_config(tmp_path, samples, **extra):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["samples"] = samples
    cfg.update(extra)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_lint_is_clean():
    r = snakemake("--lint", "--directory", str(ROOT))
    assert r.returncode == 0, r.stderr
    assert "Congratulations" in r.stdout + r.stderr, r.stdout + r.stderr


def test_dry_run_of_the_default_lists_every_sample(tmp_path):
    r = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(ROOT / "config/config.yaml"))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    samples = yaml.safe_load((ROOT / "config/config.yaml").read_text())["samples"]
    for s in samples:
        assert f"results/{s}/01_ingest/datacube.h5" in out
    assert "rule provenance:" in out or "localrule provenance:" in out


def test_misspelt_config_key_is_an_error(tmp_path):
    cfg = write_config(tmp_path, {"x": {"source": "synthetic", "preset": "pristine", "presett": "cracked"}})
    r = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(cfg))
    assert r.returncode != 0
    assert "presett" in r.stdout + r.stderr


def _npy_sample(tmp_path, data):
    np.save(tmp_path / "cube.npy", data)
    return {"source": "file", "format": "npy", "path": str(tmp_path / "cube.npy"),
            "calibration": {"energy_eV": 300000.0, "semiangle_mrad": 25.0, "scan_step_A": 2.0,
                            "mrad_per_pixel": 1.0}}


@pytest.mark.workflow
def test_ingest_and_provenance_run_through_snakemake(tmp_path):
    rng = np.random.default_rng(0)
    q = np.hypot(*np.meshgrid(np.arange(24) - 12, np.arange(24) - 12, indexing="ij"))
    disk = (q <= 6).astype(np.float32)
    data = rng.poisson(50 * disk + 0.5, size=(5, 6, 24, 24)).astype(np.float32)
    cfg = write_config(tmp_path, {"tiny": _npy_sample(tmp_path, data)})
    r = snakemake("--cores", "1", "--directory", str(tmp_path), "--configfile", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    cube = tmp_path / "results/tiny/01_ingest/datacube.h5"
    with h5py.File(cube, "r") as f:
        np.testing.assert_array_equal(f["datacube"][...], data)
        assert f["datacube"].attrs["scan_step_A"] == 2.0
        assert f.attrs["provenance_rule"] == "ingest"
        assert str(tmp_path / "cube.npy") in json.loads(f.attrs["provenance_inputs_sha256"])
    assert (tmp_path / "results/tiny/01_ingest/overview.png").stat().st_size > 10_000
    manifest = json.loads((tmp_path / "results/provenance.json").read_text())
    made = {e["path"]: e["rule"] for e in manifest["outputs"]}
    assert made == {"results/tiny/01_ingest/datacube.h5": "ingest",
                    "results/tiny/01_ingest/overview.png": "ingest"}
    assert "ingest" in (tmp_path / "logs/tiny/ingest.log").read_text()


@pytest.mark.workflow
def test_bad_input_fails_with_one_sentence_and_leaves_no_output(tmp_path):
    data = np.ones((3, 3, 8, 8), dtype=np.float32)
    data[1, 2, 3, 3] = np.nan
    cfg = write_config(tmp_path, {"bad": _npy_sample(tmp_path, data)})
    r = snakemake("--cores", "1", "--directory", str(tmp_path), "--configfile", str(cfg))
    assert r.returncode != 0
    log = (tmp_path / "logs/bad/ingest.log").read_text()
    assert "cube.npy" in log and "NaN" in log
    folder = tmp_path / "results/bad/01_ingest"
    assert not folder.exists() or not any(folder.iterdir())


def test_paper_config_dry_run_alone(tmp_path):
    """config/paper.yaml plans the whole chain for its one sample, not merged with the default."""
    r = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(ROOT / "config/paper.yaml"))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    for rule in ("simulate", "ingest", "drift_correct", "parallax", "calibrate", "reconstruct", "strain",
                 "core", "dislocations", "surface", "validate", "figures", "provenance"):
        assert f"rule {rule}:" in out, rule
    assert "results/paper_particle/05_reconstruct/reconstruction.h5" in out
    assert "results/pristine" not in out


def test_slurm_profile_dry_run(tmp_path):
    r = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(ROOT / "config/config.yaml"),
                  "--profile", str(ROOT / "workflow/profiles/slurm"))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
