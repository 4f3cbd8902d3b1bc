# msptycho: 4D-STEM of core-shell nanoparticles -> 3-D strain, core and dislocation maps.
# Rules live in workflow/rules/*.smk, one file per stage; shared helpers in common.smk.
from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless a config was given (--configfile config/paper.yaml): then that one
# alone, not merged into the default's samples.
if not config.get("samples"):

    configfile: "config/config.yaml"



include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/reconstruct.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/validate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/provenance.smk"


rule all:
    input:
        final_outputs(),
        "results/provenance.json",
    default_target: True
