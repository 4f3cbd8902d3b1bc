"""Rule figure_haadf: the drift-corrected HAADF image with the crack marked where known."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # the library, also in envs without msptycho installed
import numpy as np

from msptycho.figures.paper import FigureSettings, plot_haadf
from msptycho.io.calib_io import read_haadf
from msptycho.io.simio import read_scan_pair, read_truth
from msptycho.logs import setup_logging

log = setup_logging(snakemake.log[0])
inp = snakemake.input
drift = read_haadf(inp.haadf)
pair = read_scan_pair(inp.scan_pair)
origin = np.asarray(pair["origin_A"]) - drift.pad_px * drift.pixel_size_A
crack_xy = None
if inp.get("truth"):
    truth = read_truth(inp.truth)
    idx = np.argwhere(truth.crack_mask)
    if len(idx):
        crack_xy = tuple(np.asarray(truth.origin_A) + truth.sampling_A * idx[:, 1:].mean(axis=0))
        log.info("crack centroid (truth): %s A", crack_xy)
plot_haadf(drift.image, drift.pixel_size_A, snakemake.output.haadf, coverage=drift.coverage, crack_xy_A=crack_xy,
           image_origin_A=tuple(origin), title=snakemake.wildcards.sample,
           settings=FigureSettings.from_mapping(snakemake.params.figures))
