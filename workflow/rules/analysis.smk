# Per-slice lattice analysis of the reconstruction: strain (GPA), core (order parameter),
# dislocations (Bragg-filter phase windings), surface (lattice-fringe isosurface).
RECONSTRUCTION = "results/{sample}/05_reconstruct/reconstruction.h5"


rule strain:
    """Strain maps of every slice by geometric phase analysis."""
    input:
        reconstruction=RECONSTRUCTION,
    output:
        strain="results/{sample}/06_strain/strain.h5",
    params:
        analysis="strain",
        settings=section("strain"),
    log:
        "logs/{sample}/strain.log",
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/lattice_analysis.py"


rule core:
    """Sublattice order parameter, 3-D core mask and centroid."""
    input:
        reconstruction=RECONSTRUCTION,
    output:
        core="results/{sample}/07_structure/core.h5",
    params:
        analysis="core",
        settings=section("core"),
    log:
        "logs/{sample}/core.log",
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/lattice_analysis.py"


rule dislocations:
    """Dislocation positions per slice, Burgers vectors and 3-D lines."""
    input:
        reconstruction=RECONSTRUCTION,
    output:
        dislocations="results/{sample}/07_structure/dislocations.h5",
    params:
        analysis="dislocations",
        settings=section("dislocations"),
    log:
        "logs/{sample}/dislocations.log",
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/lattice_analysis.py"


rule surface:
    """Particle surface: lattice-fringe amplitude volume, mask and isosurface mesh."""
    input:
        reconstruction=RECONSTRUCTION,
    output:
        surface="results/{sample}/07_structure/surface.h5",
        mesh="results/{sample}/07_structure/surface.vtp",
    params:
        analysis="surface",
        settings=section("surface"),
    log:
        "logs/{sample}/surface.log",
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/lattice_analysis.py"


for _name in ("strain", "core", "dislocations", "surface"):
    PRODUCT_RULES[_name] = SAMPLES
