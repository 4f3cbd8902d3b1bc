"""Rule validate: reconstruction and analyses against the simulator's truth."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # the library, also in envs without msptycho installed
import json

from msptycho import lattice
from msptycho.figures.paper import FigureSettings, plot_validation
from msptycho.io import InputError, Provenance, atomic_path
from msptycho.io import analysis as aio
from msptycho.io.reconstruction import read_reconstruction
from msptycho.io.simio import read_truth
from msptycho.logs import setup_logging
from msptycho.validate import validate_reconstruction

log = setup_logging(snakemake.log[0])
inp, out, par = snakemake.input, snakemake.output, snakemake.params
try:
    settings = {name: lattice.settings_from_mapping(cls, getattr(par, name), f"config '{name}'") for name, cls in
                (("strain", lattice.StrainSettings), ("core", lattice.CoreSettings),
                 ("dislocations", lattice.DislocationSettings), ("surface", lattice.SurfaceSettings))}
    metrics, fig = validate_reconstruction(
        read_truth(inp.truth), read_reconstruction(inp.reconstruction), aio.read_strain(inp.strain),
        aio.read_core(inp.core), aio.read_dislocations(inp.dislocations), aio.read_surface(inp.surface), settings)
except InputError as e:
    log.error("%s", e)
    raise SystemExit(1)
prov = Provenance.collect("validate", {}, list(snakemake.input), project_dir=f"{snakemake.scriptdir}/..")
metrics["provenance"] = {"inputs_sha256": prov.inputs_sha256, "git_revision": prov.git_revision,
                         "created_utc": prov.created_utc, "versions": prov.versions}
with atomic_path(out.json) as tmp:
    tmp.write_text(json.dumps(metrics, indent=1) + "\n")
pot = metrics["potential"]
log.info("slice correlation with truth: %s", ["%.3f" % c if c is not None else "nan" for c in pot["slice_correlation"]])
log.info("projected correlation %.3f; core contrast peaks at slice %s, true core slice %.2f",
         pot["projected_correlation"], pot["core_peak_slice"], pot["true_core_slice"] or float("nan"))
log.info("positions: %s", metrics.get("positions"))
log.info("method on truth: %s", json.dumps(metrics["method_on_truth"]))
log.info("reconstruction: %s", json.dumps(metrics["reconstruction"]))
metrics_text = {"projected r": pot["projected_correlation"],
                "position RMS before/after (A)": "%.3f / %.3f" % (metrics["positions"]["initial_rms_A"],
                                                                  metrics["positions"]["refined_rms_A"])
                if "positions" in metrics else "n/a"}
plot_validation(out.figure, **fig, metrics_text=metrics_text, title=snakemake.wildcards.sample,
                settings=FigureSettings.from_mapping(par.figures))
