rule ingest:
    """Read the raw 4D-STEM file into the canonical datacube and draw its overview."""
    input:
        raw=raw_datacube,
    output:
        datacube="results/{sample}/01_ingest/datacube.h5",
        overview=report(
            "results/{sample}/01_ingest/overview.png",
            caption="../report/ingest_overview.rst",
            category="1. Data",
            subcategory="{sample}",
        ),
    params:
        reader=ingest_params,
        seed=config["seed"],
    log:
        "logs/{sample}/ingest.log",
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/io.yaml"
    script:
        "../../scripts/ingest.py"


PRODUCT_RULES["ingest"] = SAMPLES
