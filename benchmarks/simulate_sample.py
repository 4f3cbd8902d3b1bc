"""Simulate one of the config's synthetic samples into a folder, without Snakemake.

Usage::

    python benchmarks/simulate_sample.py pristine /tmp/pristine/00_raw [--config config/config.yaml]

Writes the same four HDF5 files as the ``simulate`` rule (``datacube.h5``, ``scan_pair.h5``,
``vacuum_probe.h5``, ``truth.h5``) from the same preset, overrides and seed, for machines where
the workflow is not installed (the GPU checks in ``gpu_check.sh``); ``validate_ptycho.py`` then
reconstructs it and scores it against the truth.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(argv=None) -> int:
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sample", help="a synthetic sample of the config, e.g. pristine")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--config", type=Path, default=root / "config" / "config.yaml")
    ap.add_argument("--workers", type=int, default=-1, help="FFT threads (-1: every core)")
    a = ap.parse_args(argv)

    from msptycho.io import Provenance
    from msptycho.io.simio import write_simulation
    from msptycho.simulate import configured, simulate_sample

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = yaml.safe_load(a.config.read_text())
    entry = cfg["samples"].get(a.sample)
    if entry is None or entry.get("source") != "synthetic":
        raise SystemExit(f"{a.config}: samples.{a.sample} is not a synthetic sample of this config.")
    params = configured(a.sample, entry["preset"], entry.get("simulation"), cfg["seed"])
    dz = cfg.get("reconstruct", {}).get("slice_thickness_A", 12.0)
    result = simulate_sample(params, recon_slice_thickness_A=dz, workers=a.workers)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    prov = Provenance.collect("simulate_sample.py", {"simulation": dataclasses.asdict(params),
                                                     "recon_slice_thickness_A": dz}, seed=params.seed,
                              project_dir=str(root))
    write_simulation(result, a.out_dir / "datacube.h5", a.out_dir / "scan_pair.h5", a.out_dir / "vacuum_probe.h5",
                     a.out_dir / "truth.h5", prov)
    print(f"{a.sample}: simulated in {sum(result.timings_s.values()):.1f} s -> {a.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
