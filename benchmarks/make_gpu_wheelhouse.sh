#!/usr/bin/env bash
# Builds .whl/, the wheelhouse benchmarks/gpu_workflow_check.sh installs on a CUDA machine without
# network: Snakemake and what the workflow needs up to reconstruct_gpu that such a machine (Python
# 3.12, x86-64, with numpy, scipy, numba, h5py, scikit-image, scikit-learn, matplotlib, pyyaml,
# pydantic's typing-extensions, colorama and CuPy already installed) lacks, and pyFFTW (the CPU
# engine's FFT library and fused kernels, for the CPU side of bench_gpu.py and bench_ptycho.py
# there). One version of each, 41 wheels, about 26 MiB. Run from the repository root on a machine with network; .whl/ is ignored
# by git (add "/.whl/" to .git/info/exclude) and travels with the device call (carry: .whl).
set -euo pipefail
py=${PYTHON:-python3}
mkdir -p .whl
get() {
    $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$@"
}
get snakemake==9.27.1 snakemake-interface-common==1.23.0 snakemake-interface-executor-plugins==9.4.0 \
    snakemake-interface-logger-plugins==2.1.0 snakemake-interface-report-plugins==1.3.0 \
    snakemake-interface-scheduler-plugins==2.0.2 snakemake-interface-storage-plugins==4.4.1 \
    argparse-dataclass==2.0.0 conda-inject==1.3.2 configargparse==1.9.0 docutils==0.22.4 dpath==2.2.0 \
    fastjsonschema==2.22.3 gitdb==4.0.12 gitpython==3.2.1 greenlet==3.5.6 humanfriendly==10.0 \
    immutables==0.21 jupyter-core==5.9.1 nbformat==5.11.1 platformdirs==4.14.8 pulp==3.3.2 \
    pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 \
    smart-open==7.7.1 smmap==5.0.3 sqlalchemy==2.0.58 sqlmodel==0.0.37 tenacity==9.2.1 throttler==1.2.3 \
    traitlets==5.15.0 yte==1.9.4 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
    referencing==0.37.0 rpds-py==0.30.0 bayesian-optimization==3.4.0 pyfftw==0.15.1
# connection_pool (needed by snakemake) is published only as a source package: build its
# pure-python wheel here
$py -m pip wheel -q --no-deps -w .whl connection_pool==0.0.3
ls .whl | wc -l
du -sh .whl
