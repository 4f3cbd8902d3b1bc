# Shared helpers: config validation, sample table, input functions.
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

SAMPLES = sorted(config["samples"])
SYNTHETIC = sorted(s for s, v in config["samples"].items() if v["source"] == "synthetic")


wildcard_constraints:
    sample="|".join(SAMPLES) if SAMPLES else "NOSAMPLE",


def section(name):
    """A stage's config section ({} when left out: the library's defaults apply)."""
    return dict(config.get(name) or {})


def scan_pair_file(sample):
    """The sample's orthogonal HAADF scan pair, or None."""
    s = config["samples"][sample]
    if s["source"] == "synthetic":
        return f"results/{sample}/00_raw/scan_pair.h5"
    return s.get("scan_pair")


def vacuum_probe_file(wildcards):
    """The sample's vacuum probe pattern ([] when it has none)."""
    s = config["samples"][wildcards.sample]
    if s["source"] == "synthetic":
        return f"results/{wildcards.sample}/00_raw/vacuum_probe.h5"
    return s.get("vacuum_probe", [])


DRIFT_SAMPLES = [s for s in SAMPLES if scan_pair_file(s)]

# Threads of the rules that use every core they get: a local run caps them at --cores, a cluster
# profile sets them per rule (set-threads), so none needs the total number of cores up front.
ALL_CORES = 64
# The heavy per-sample rules (simulate, calibrate, reconstruct) share a local run's cores equally
# among the samples, so the samples advance side by side (on 2 cores two 1-thread jobs finish
# sooner than two 2-thread jobs in turn: none of them scales perfectly); a cluster profile's
# set-threads overrides this.
def _local_cores():
    """--cores of a local run; ALL_CORES where none is given (cluster runs, --report, --lint)."""
    try:
        return int(workflow.cores)
    except WorkflowError:
        return ALL_CORES


SAMPLE_THREADS = max(1, min(ALL_CORES, _local_cores() // max(1, len(config["samples"]))))


def truth_file(wildcards):
    """The simulator's truth of a synthetic sample ([] for real data): printed beside estimates."""
    if config["samples"][wildcards.sample]["source"] == "synthetic":
        return f"results/{wildcards.sample}/00_raw/truth.h5"
    return []


def raw_datacube(wildcards):
    """The raw 4D-STEM file of a sample: the simulator's output or the user's file."""
    s = config["samples"][wildcards.sample]
    if s["source"] == "synthetic":
        return f"results/{wildcards.sample}/00_raw/datacube.h5"
    return s["path"]


def ingest_params(wildcards):
    """Reader settings of a sample (format, dataset, calibration, 4D Camera options)."""
    s = config["samples"][wildcards.sample]
    if s["source"] == "synthetic":
        return {"format": "canonical"}
    keys = ("format", "dataset", "calibration", "drop_flyback_column", "bin_factor")
    return {k: s[k] for k in keys if k in s}


# Rules whose outputs the default target builds, with the samples each runs for. Extended by
# the stage files as they are included; provenance.smk and `rule all` come last.
PRODUCT_RULES = {}


def outputs_by_rule():
    """{output path: rule name} for every product of the default target."""
    out = {}
    for name, samples in PRODUCT_RULES.items():
        for f in expand(list(getattr(rules, name).output), sample=samples):
            out[f] = name
    return out


def final_outputs():
    """Every per-sample product the default target builds, sorted."""
    return sorted(outputs_by_rule())


def figure_output(name, caption):
    """A per-sample figure under results/{sample}/figures/, registered for the report."""
    return report(
        f"results/{{sample}}/figures/{name}",
        caption=f"../report/{caption}.rst",
        category="4. Figures",
        subcategory="{sample}",
    )
