"""Rule parallax: datacube -> defocus, astigmatism and scan rotation from tilt-corrected bright field."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # the library, also in envs without msptycho installed
from msptycho.figures.calibration import plot_parallax
from msptycho.io import InputError, Provenance, open_datacube
from msptycho.io.calib_io import write_parallax
from msptycho.io.simio import read_truth
from msptycho.logs import setup_logging
from msptycho.parallax import parallax_fit
from msptycho.simulate.truth import defocus_reference_planes

log = setup_logging(snakemake.log[0])
settings = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(snakemake.params.parallax).items()}
try:
    with open_datacube(snakemake.input.datacube) as (dset, cal):
        result = parallax_fit(dset, cal, **settings)
except InputError as e:
    log.error("%s", e)
    raise SystemExit(1)
log.info("defocus %.1f A, C12 %.1f A at %.3f rad, scan rotation %.2f deg, transpose %s, residual %.3f A",
         result.defocus_A, result.C12_A, result.phi12_rad, result.scan_rotation_deg, result.transpose,
         result.residual_rms_A)
truth = None
if snakemake.input.get("truth"):
    # a thick sample's parallax defocus refers to the contrast-weighted plane of
    # msptycho.simulate.truth.defocus_reference_planes, not to the entrance surface
    gt = read_truth(snakemake.input.truth)
    planes = defocus_reference_planes(gt)
    truth = {"defocus_A": planes["defocus_parallax_A"], "C12_A": gt.probe["C12_A"], "scan_rotation_deg": 0.0}
    log.info("truth: defocus %.1f A at the entrance surface, %.1f A at the potential centroid (%.1f A deep), "
             "%.1f A at the parallax plane (contrast-weighted); scan rotation 0 deg",
             planes["defocus_entrance_A"], planes["defocus_centroid_A"], planes["centroid_depth_A"],
             planes["defocus_parallax_A"])
    log.info("parallax vs truth: defocus %.1f A vs %.1f A at the parallax plane (%+.1f %%; %+.1f %% vs the "
             "entrance's %.1f A), scan rotation %.2f deg vs 0 deg", result.defocus_A, planes["defocus_parallax_A"],
             100 * (result.defocus_A / planes["defocus_parallax_A"] - 1),
             100 * (result.defocus_A / planes["defocus_entrance_A"] - 1), planes["defocus_entrance_A"],
             result.scan_rotation_deg)
prov = Provenance.collect("parallax", {"parallax": settings}, [snakemake.input.datacube],
                          project_dir=f"{snakemake.scriptdir}/..")
write_parallax(snakemake.output.parallax, result, prov)
plot_parallax(result, snakemake.output.figure, title=snakemake.wildcards.sample, truth=truth)
