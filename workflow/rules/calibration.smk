# The reconstruction's starting point: drift-corrected HAADF, parallax estimates of the probe
# aberrations and scan rotation, and their Bayesian-optimisation refinement.


rule drift_correct:
    """Correct the linear and non-linear drift of the orthogonal HAADF scan pair."""
    input:
        scan_pair=lambda wildcards: scan_pair_file(wildcards.sample),
    output:
        haadf="results/{sample}/02_drift/haadf.h5",
        figure=report(
            "results/{sample}/02_drift/drift.png",
            caption="../report/drift.rst",
            category="2. Calibration",
            subcategory="{sample}",
        ),
    params:
        drift=section("drift"),
    log:
        "logs/{sample}/drift_correct.log",
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/drift_correct.py"


rule parallax:
    """Tilt-corrected bright field: defocus, astigmatism, scan rotation from image shifts."""
    input:
        datacube="results/{sample}/01_ingest/datacube.h5",
        truth=truth_file,
    output:
        parallax="results/{sample}/03_parallax/parallax.h5",
        figure=report(
            "results/{sample}/03_parallax/parallax.png",
            caption="../report/parallax.rst",
            category="2. Calibration",
            subcategory="{sample}",
        ),
    params:
        parallax=section("parallax"),
    log:
        "logs/{sample}/parallax.log",
    resources:
        mem_mb=6000,
        runtime=30,
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/parallax.py"


rule calibrate:
    """Bayesian optimisation of defocus, scan rotation and step size around the parallax estimates."""
    input:
        datacube="results/{sample}/01_ingest/datacube.h5",
        parallax="results/{sample}/03_parallax/parallax.h5",
        vacuum_probe=vacuum_probe_file,
        truth=truth_file,
    output:
        calibration="results/{sample}/04_calibrate/calibration.json",
        figure=report(
            "results/{sample}/04_calibrate/trace.png",
            caption="../report/calibrate_trace.rst",
            category="2. Calibration",
            subcategory="{sample}",
        ),
    params:
        calibrate=section("calibrate"),
        reconstruct=section("reconstruct"),
        seed=config["seed"],
    threads: SAMPLE_THREADS
    log:
        "logs/{sample}/calibrate.log",
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/ptycho.yaml"
    script:
        "../../scripts/calibrate.py"


PRODUCT_RULES["drift_correct"] = DRIFT_SAMPLES
PRODUCT_RULES["parallax"] = SAMPLES
PRODUCT_RULES["calibrate"] = SAMPLES
