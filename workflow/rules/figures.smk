# The paper's figures and movies per sample, from the workflow's own results.
MOVIES = ("potential", "exx", "eyy", "dilation", "exy", "rotation")


rule figures:
    """Figs. 2-4 and S.2-S.8 analogues and the per-slice movies of one sample."""
    input:
        reconstruction="results/{sample}/05_reconstruct/reconstruction.h5",
        calibration="results/{sample}/04_calibrate/calibration.json",
        strain="results/{sample}/06_strain/strain.h5",
        core="results/{sample}/07_structure/core.h5",
        dislocations="results/{sample}/07_structure/dislocations.h5",
        surface="results/{sample}/07_structure/surface.h5",
    output:
        slices_strain=figure_output("slices_strain.png", "fig_slices_strain"),
        render3d=figure_output("render3d.png", "fig_render3d"),
        montage=figure_output("slice_montage.png", "fig_slice_montage"),
        order_parameter=figure_output("order_parameter.png", "fig_order_parameter"),
        dislocation_maps=figure_output("dislocation_maps.png", "fig_dislocation_maps"),
        probe_fourier=figure_output("probe_fourier.png", "fig_probe_fourier"),
        probe_real=figure_output("probe_real.png", "fig_probe_real"),
        fft_peaks=figure_output("fft_peaks.png", "fig_fft_peaks"),
        movies=[figure_output(f"movie_{m}.gif", "fig_movies") for m in MOVIES],
    params:
        figures=section("figures"),
        movies=MOVIES,
    log:
        "logs/{sample}/figures.log",
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/figures.yaml"
    script:
        "../../scripts/figures.py"


rule figure_haadf:
    """Drift-corrected HAADF image (Fig. 1b/c analogue), the crack marked where known."""
    input:
        haadf="results/{sample}/02_drift/haadf.h5",
        scan_pair=lambda wildcards: scan_pair_file(wildcards.sample),
        truth=truth_file,
    output:
        haadf=figure_output("haadf.png", "fig_haadf"),
    params:
        figures=section("figures"),
    log:
        "logs/{sample}/figure_haadf.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/figures.yaml"
    script:
        "../../scripts/figure_haadf.py"


PRODUCT_RULES["figures"] = SAMPLES
PRODUCT_RULES["figure_haadf"] = DRIFT_SAMPLES
