# One Zarr store per noise level (config `noise`); everything downstream lives under the
# level's name, so adding a level reruns only what depends on it.


rule add_noise:
    input:
        layout.patches(RESULTS),
    output:
        directory(layout.level_patches(RESULTS, "{level}")),
    params:
        # Only this level's own keys: editing another level must not rerun this one.
        config=lambda wildcards: json.dumps(
            {"seed": config["seed"], "noise": [noise_level(wildcards.level)]}, sort_keys=True
        ),
    threads: workflow.cores
    resources:
        mem_mb=2000,
        runtime=30,
    log:
        layout.log(RESULTS, "add_noise_{level}"),
    benchmark:
        layout.benchmark(RESULTS, "add_noise", "add_noise_{level}"),
    conda:
        "../envs/data.yaml"
    shell:
        "python -m cosmo_sop noise --input {input:q} --output {output:q} --level {wildcards.level}"
        " --config-json {params.config:q} --workers {threads} 2>&1 | tee {log:q}"
