# HEALPix maps (real CosmoGridV1 or the mock) -> flat gnomonic patches in one Zarr store,
# split into train/val/test by cosmology.


rule ingest:
    input:
        unpack(ingest_input),
    output:
        directory(layout.patches(RESULTS)),
    params:
        config=config_json("source", "cosmogrid", "mock", "ingest"),
        root=source_root(),
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        layout.log(RESULTS, "ingest"),
    conda:
        "../envs/data.yaml"
    shell:
        "python -m cosmo_sop ingest --root {params.root:q} --output {output:q}"
        " --config-json {params.config:q} --workers {threads} 2>&1 | tee {log:q}"


rule plot_patches:
    input:
        layout.patches(RESULTS),
    output:
        report(
            layout.figures(RESULTS) / layout.PATCHES_FIGURE,
            caption="../report/patches.rst",
            category="Data",
        ),
    log:
        layout.log(RESULTS, "plot_patches"),
    conda:
        "../envs/data.yaml"
    shell:
        "python -m cosmo_sop plot-patches --input {input:q} --output {output:q} 2>&1 | tee {log:q}"
