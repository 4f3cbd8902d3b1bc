"""Rule ingest: raw 4D-STEM file -> canonical datacube + overview figure."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # the library, also in envs without msptycho installed
from msptycho.figures.overview import plot_ingest_overview
from msptycho.io import InputError, Provenance, open_datacube
from msptycho.io.readers import ingest_to_canonical
from msptycho.logs import setup_logging
from msptycho.virtual import compute_overview, disk_from_calibration

log = setup_logging(snakemake.log[0])
reader = dict(snakemake.params.reader)
raw = snakemake.input.raw
prov = Provenance.collect("ingest", {"reader": reader}, [raw], seed=snakemake.params.seed,
                          project_dir=f"{snakemake.scriptdir}/..")
log.info("ingest %s as %s", raw, reader["format"])
try:
    cal = ingest_to_canonical(raw, reader.pop("format"), snakemake.output.datacube, provenance=prov, **reader)
    with open_datacube(snakemake.output.datacube) as (dset, cal):
        log.info("datacube %s, calibration %s", dset.shape, cal)
        overview = compute_overview(dset, fallback_disk=disk_from_calibration(cal))
    log.info("bright-field disk: centre %s px, radius %.2f px", overview.disk.center_px, overview.disk.radius_px)
    plot_ingest_overview(overview, cal, snakemake.output.overview, title=snakemake.wildcards.sample)
except InputError as e:
    log.error("%s", e)
    raise SystemExit(1)
