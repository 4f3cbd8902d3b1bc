"""Rule provenance: results/provenance.json lists every output, its sha256 and its rule."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # the library, also in envs without msptycho installed
from msptycho.io.provenance import write_manifest
from msptycho.logs import setup_logging

log = setup_logging(snakemake.log[0])
m = write_manifest(snakemake.output[0], dict(snakemake.params.rules_by_output), snakemake.scriptdir + "/..")
log.info("recorded %d outputs in %s", len(m["outputs"]), snakemake.output[0])
