"""Rule drift_correct: orthogonal HAADF scan pair -> drift-corrected image."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # the library, also in envs without msptycho installed
from msptycho.drift import correct_drift
from msptycho.figures.calibration import plot_drift
from msptycho.io import InputError, Provenance
from msptycho.io.calib_io import write_haadf
from msptycho.io.simio import read_scan_pair
from msptycho.logs import setup_logging

log = setup_logging(snakemake.log[0])
settings = dict(snakemake.params.drift)
try:
    pair = read_scan_pair(snakemake.input.scan_pair)
    images = pair["images"]
    result = correct_drift(images[0], images[1], pair["pixel_size_A"], **settings)
except InputError as e:
    log.error("%s", e)
    raise SystemExit(1)
log.info("linear drift %s px/frame; residual %.4f -> %.4f (linear) -> %.4f (refined)", result.linear_drift_px.tolist(),
         result.residual_initial, result.residual_linear, result.residual_final)
prov = Provenance.collect("drift_correct", {"drift": settings}, list(snakemake.input),
                          project_dir=f"{snakemake.scriptdir}/..")
write_haadf(snakemake.output.haadf, result, prov)
plot_drift(result, images[0], images[1], snakemake.output.figure, title=snakemake.wildcards.sample)
