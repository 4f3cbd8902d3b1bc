rule validate:
    """Reconstruction and analyses against the simulator's ground truth (synthetic samples)."""
    input:
        truth="results/{sample}/00_raw/truth.h5",
        reconstruction="results/{sample}/05_reconstruct/reconstruction.h5",
        strain="results/{sample}/06_strain/strain.h5",
        core="results/{sample}/07_structure/core.h5",
        dislocations="results/{sample}/07_structure/dislocations.h5",
        surface="results/{sample}/07_structure/surface.h5",
    output:
        json="results/{sample}/08_validate/validation.json",
        figure=report(
            "results/{sample}/08_validate/validation.png",
            caption="../report/fig_validation.rst",
            category="5. Validation",
            subcategory="{sample}",
        ),
    params:
        strain=section("strain"),
        core=section("core"),
        dislocations=section("dislocations"),
        surface=section("surface"),
        figures=section("figures"),
    log:
        "logs/{sample}/validate.log",
    resources:
        mem_mb=6000,
        runtime=30,
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/validate.py"


PRODUCT_RULES["validate"] = SYNTHETIC
