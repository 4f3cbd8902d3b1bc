rule simulate:
    """Make a synthetic sample: atoms, 4D-STEM datacube, vacuum probe, HAADF scan pair, truth."""
    output:
        datacube="results/{sample}/00_raw/datacube.h5",
        scan_pair="results/{sample}/00_raw/scan_pair.h5",
        vacuum_probe="results/{sample}/00_raw/vacuum_probe.h5",
        truth="results/{sample}/00_raw/truth.h5",
        figure=report(
            "results/{sample}/00_raw/model.png",
            caption="../report/simulate_model.rst",
            category="0. Simulation",
            subcategory="{sample}",
        ),
    params:
        preset=lambda wildcards: config["samples"][wildcards.sample]["preset"],
        overrides=lambda wildcards: config["samples"][wildcards.sample].get("simulation", {}),
        recon_slice_thickness_A=section("reconstruct").get("slice_thickness_A", 12.0),
        seed=config["seed"],
    threads: SAMPLE_THREADS
    log:
        "logs/{sample}/simulate.log",
    resources:
        mem_mb=6000,
        runtime=30,
    conda:
        "../../envs/simulate.yaml"
    script:
        "../../scripts/simulate.py"


PRODUCT_RULES["simulate"] = SYNTHETIC
