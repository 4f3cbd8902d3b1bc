# The engine is chosen by config (reconstruct.engine): one rule or the other makes the output.
if section("reconstruct").get("engine", "cpu") == "gpu":

    rule reconstruct_gpu:
        """Multislice ptychography on a CUDA GPU (CuPy): the CPU engine's maths, GPU kernels."""
        input:
            datacube="results/{sample}/01_ingest/datacube.h5",
            calibration="results/{sample}/04_calibrate/calibration.json",
            vacuum_probe=vacuum_probe_file,
        output:
            reconstruction="results/{sample}/05_reconstruct/reconstruction.h5",
            convergence=report(
                "results/{sample}/05_reconstruct/convergence.png",
                caption="../report/convergence.rst",
                category="3. Reconstruction",
                subcategory="{sample}",
            ),
        params:
            reconstruct=section("reconstruct"),
            seed=config["seed"],
            backend="gpu",
        threads: 2
        log:
            "logs/{sample}/reconstruct.log",
        resources:
            mem_mb=16000,
            runtime=120,
            slurm_extra="'--gres=gpu:1'",
        conda:
            "../../envs/ptycho-gpu.yaml"
        script:
            "../../scripts/reconstruct.py"

    PRODUCT_RULES["reconstruct_gpu"] = SAMPLES

else:

    rule reconstruct:
        """Multislice ptychography by mini-batch gradient descent on the CPU (Numba)."""
        input:
            datacube="results/{sample}/01_ingest/datacube.h5",
            calibration="results/{sample}/04_calibrate/calibration.json",
            vacuum_probe=vacuum_probe_file,
        output:
            reconstruction="results/{sample}/05_reconstruct/reconstruction.h5",
            convergence=report(
                "results/{sample}/05_reconstruct/convergence.png",
                caption="../report/convergence.rst",
                category="3. Reconstruction",
                subcategory="{sample}",
            ),
        params:
            reconstruct=section("reconstruct"),
            seed=config["seed"],
            backend="cpu",
        threads: SAMPLE_THREADS
        log:
            "logs/{sample}/reconstruct.log",
        resources:
            mem_mb=8000,
            runtime=120,
        conda:
            "../../envs/ptycho.yaml"
        script:
            "../../scripts/reconstruct.py"

    PRODUCT_RULES["reconstruct"] = SAMPLES
