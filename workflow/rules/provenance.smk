rule provenance:
    """List every output with its sha256 and the rule that made it."""
    input:
        final_outputs(),
    output:
        "results/provenance.json",
    params:
        rules_by_output=outputs_by_rule(),
    log:
        "logs/provenance.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/io.yaml"
    script:
        "../../scripts/provenance.py"
