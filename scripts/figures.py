"""Rule figures: the paper's figures and movies of one sample from its results."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # the library, also in envs without msptycho installed
from msptycho.calibrate import read_calibration_json
from msptycho.figures import paper
from msptycho.figures.movies import write_strain_movies
from msptycho.figures.render3d import render_from_results
from msptycho.io import analysis as aio
from msptycho.io.reconstruction import read_reconstruction
from msptycho.logs import setup_logging

log = setup_logging(snakemake.log[0])
inp, out = snakemake.input, snakemake.output
settings = paper.FigureSettings.from_mapping(snakemake.params.figures)
title = snakemake.wildcards.sample
rec = read_reconstruction(inp.reconstruction)
strain, core = aio.read_strain(inp.strain), aio.read_core(inp.core)
dis, surface = aio.read_dislocations(inp.dislocations), aio.read_surface(inp.surface)
px, dz = rec.sampling_A, rec.slice_thickness_A
common = dict(title=title, settings=settings)

paper.fig2_from_results(rec, strain, out.slices_strain, **common)
paper.plot_slice_montage(rec.potential_VA, px, dz, out.montage, **common)
paper.plot_order_parameter(core.order, px, dz, out.order_parameter, threshold=core.threshold,
                           core_mask=core.core_mask, **common)
paper.plot_dislocation_maps(dis.amplitude, dis.phase, px, dz, out.dislocation_maps, points=dis.points,
                            origin_A=dis.origin_A, g_vectors_inv_A=dis.g_vectors_inv_A, **common)
paper.probe_figures_from_result(rec, out.probe_fourier, out.probe_real,
                                initial_aberrations=read_calibration_json(inp.calibration).aberrations, **common)
paper.fft_from_results(rec, out.fft_peaks, strain=strain, core=core, dislocations=dis, **common)
names = {"potential": "potential", "exx": "exx", "eyy": "eyy", "dilation": "dilation", "exy": "exy",
         "rotation": "rotation_deg"}
write_strain_movies(rec.potential_VA, strain, {names[m]: p for m, p in zip(snakemake.params.movies, out.movies)},
                    px, dz, **common)
render_from_results(surface, out.render3d, core=core, dislocations=dis, **common)
log.info("wrote %d figures and movies for %s", len(out), title)
