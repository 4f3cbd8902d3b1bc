"""Rules strain, core, dislocations, surface: one lattice analysis of the reconstruction."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # the library, also in envs without msptycho installed
import dataclasses

from msptycho import lattice
from msptycho.io import InputError, Provenance
from msptycho.io import analysis as aio
from msptycho.io.reconstruction import read_reconstruction
from msptycho.logs import setup_logging

log = setup_logging(snakemake.log[0])
name = snakemake.params.analysis
SETTINGS = {"strain": lattice.StrainSettings, "core": lattice.CoreSettings,
            "dislocations": lattice.DislocationSettings, "surface": lattice.SurfaceSettings}
try:
    rec = read_reconstruction(snakemake.input.reconstruction)
    settings = lattice.settings_from_mapping(SETTINGS[name], snakemake.params.settings, f"config '{name}'")
    prov = Provenance.collect(name, {name: dataclasses.asdict(settings)}, list(snakemake.input),
                              project_dir=f"{snakemake.scriptdir}/..")
    grid = dict(sampling_A=rec.sampling_A, settings=settings, origin_A=tuple(rec.origin_A))
    V = rec.potential_VA
    log.info("%s of %s: volume %s at %.4f A/px, %s", name, snakemake.input.reconstruction, V.shape,
             rec.sampling_A, settings)
    out = snakemake.output
    if name == "strain":
        result, lat = lattice.run_strain(V, **grid)
        log.info("lattice a = %.4f A at %.2f deg; g = %s 1/A; resolution %.2f A; reference %s", lat.a_A,
                 lat.angle_deg, result.g_vectors_inv_A.tolist(), result.resolution_A, result.reference)
        aio.write_strain(out.strain, result, prov)
    elif name == "core":
        result = lattice.run_core(V, **grid)
        log.info("core centroid: slice %.2f, (x, y) = %s A; threshold %.4g (%s); per-slice shell level %s",
                 result.centroid_slice, result.centroid_A, result.threshold, result.threshold_method,
                 [round(float(b), 4) for b in result.baseline])
        aio.write_core(out.core, result, prov, slice_thickness_A=rec.slice_thickness_A)
    elif name == "dislocations":
        result = lattice.run_dislocations(V, **grid)
        log.info("%d dislocation points in %d lines", len(result.points["slice"]), len(result.lines["line_id"]))
        aio.write_dislocations(out.dislocations, result, prov, store_maps=settings.store_maps)
    else:
        result = lattice.run_surface(V, slice_thickness_A=rec.slice_thickness_A, **grid)
        log.info("surface over slices %s", result.slice_range)
        aio.write_surface(out.surface, result, prov, vtp_path=out.mesh)
except InputError as e:
    log.error("%s", e)
    raise SystemExit(1)
