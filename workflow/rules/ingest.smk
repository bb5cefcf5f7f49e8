# HEALPix maps (real CosmoGridV1 or the mock) -> flat gnomonic patches in one Zarr store,
# split into train/val/test by cosmology. With `parallel.cosmologies_per_job` the store is
# written by one job per part of the cosmologies (cosmo_sop/fanout.py), between a job that
# prepares it and one that checks it and moves it into place; it equals the one-job store.

PATCHES = layout.patches(RESULTS)
if N_PARTS:

    rule ingest_start:
        input:
            unpack(ingest_input),
        output:
            temp(layout.parts_plan(PATCHES)),
        params:
            config=config_json("source", "cosmogrid", "mock", "ingest"),
            root=source_root(),
            store=PATCHES,
        resources:
            mem_mb=2000,
            runtime=15,
        log:
            layout.log(RESULTS, "ingest_start"),
        benchmark:
            layout.benchmark(RESULTS, "ingest_start"),
        conda:
            "../envs/data.yaml"
        shell:
            "python -m cosmo_sop ingest --root {params.root:q} --output {params.store:q}"
            " --config-json {params.config:q} --part start {PARTS_OPTIONS} 2>&1 | tee {log:q}"

    rule ingest_part:
        input:
            unpack(ingest_input),
            plan=layout.parts_plan(PATCHES),
        output:
            temp(layout.part_record(PATCHES, "{part}")),
        wildcard_constraints:
            part=r"\d+",
        params:
            config=config_json("source", "cosmogrid", "mock", "ingest"),
            root=source_root(),
            store=PATCHES,
        threads: workflow.cores
        resources:
            mem_mb=4000,
            runtime=60,
        log:
            layout.log(RESULTS, "ingest_part{part}"),
        benchmark:
            layout.benchmark(RESULTS, "ingest_part", "ingest_part{part}"),
        conda:
            "../envs/data.yaml"
        shell:
            "python -m cosmo_sop ingest --root {params.root:q} --output {params.store:q}"
            " --config-json {params.config:q} --part {wildcards.part} {PARTS_OPTIONS}"
            " --workers {threads} 2>&1 | tee {log:q}"

    rule ingest:
        input:
            unpack(ingest_input),
            plan=layout.parts_plan(PATCHES),
            parts=expand(layout.part_record(PATCHES, "{part}"), part=range(N_PARTS)),
        output:
            directory(PATCHES),
        params:
            config=config_json("source", "cosmogrid", "mock", "ingest"),
            root=source_root(),
            store=PATCHES,
        threads: workflow.cores
        resources:
            mem_mb=4000,
            runtime=30,
        log:
            layout.log(RESULTS, "ingest"),
        benchmark:
            layout.benchmark(RESULTS, "ingest"),
        conda:
            "../envs/data.yaml"
        shell:
            "python -m cosmo_sop ingest --root {params.root:q} --output {params.store:q}"
            " --config-json {params.config:q} --part finish {PARTS_OPTIONS}"
            " --workers {threads} 2>&1 | tee {log:q}"

else:

    rule ingest:
        input:
            unpack(ingest_input),
        output:
            directory(PATCHES),
        params:
            config=config_json("source", "cosmogrid", "mock", "ingest"),
            root=source_root(),
        threads: workflow.cores
        resources:
            mem_mb=4000,
            runtime=60,
        log:
            layout.log(RESULTS, "ingest"),
        benchmark:
            layout.benchmark(RESULTS, "ingest"),
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
    benchmark:
        layout.benchmark(RESULTS, "plot_patches"),
    conda:
        "../envs/data.yaml"
    shell:
        "python -m cosmo_sop plot-patches --input {input:q} --output {output:q} 2>&1 | tee {log:q}"
