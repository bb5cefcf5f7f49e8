# Watershed (or patch / SLIC) segments of every noisy patch: the tokens of the SOP model and
# the units that are later classified as voids and clusters. With
# `parallel.cosmologies_per_job`, in parts as ingest (workflow/rules/ingest.smk).

if N_PARTS:

    rule segment_start:
        input:
            layout.level_patches(RESULTS, "{level}"),
        output:
            temp(layout.parts_plan(layout.segments(RESULTS, "{level}"))),
        params:
            config=config_json("segmentation"),
            patches=lambda wildcards: layout.level_patches(RESULTS, wildcards.level),
            store=lambda wildcards: layout.segments(RESULTS, wildcards.level),
        resources:
            mem_mb=2000,
            runtime=15,
        log:
            layout.log(RESULTS, "segment_start_{level}"),
        benchmark:
            layout.benchmark(RESULTS, "segment_start", "segment_start_{level}"),
        conda:
            "../envs/data.yaml"
        shell:
            "python -m cosmo_sop segment --input {params.patches:q} --output {params.store:q}"
            " --config-json {params.config:q} --part start {PARTS_OPTIONS} 2>&1 | tee {log:q}"

    rule segment_part:
        input:
            patches=layout.level_patches(RESULTS, "{level}"),
            plan=layout.parts_plan(layout.segments(RESULTS, "{level}")),
        output:
            temp(layout.part_record(layout.segments(RESULTS, "{level}"), "{part}")),
        wildcard_constraints:
            part=r"\d+",
        params:
            config=config_json("segmentation"),
            patches=lambda wildcards: layout.level_patches(RESULTS, wildcards.level),
            store=lambda wildcards: layout.segments(RESULTS, wildcards.level),
        threads: workflow.cores
        resources:
            mem_mb=2000,
            runtime=30,
        log:
            layout.log(RESULTS, "segment_{level}_part{part}"),
        benchmark:
            layout.benchmark(RESULTS, "segment_part", "segment_{level}_part{part}"),
        conda:
            "../envs/data.yaml"
        shell:
            "python -m cosmo_sop segment --input {params.patches:q} --output {params.store:q}"
            " --config-json {params.config:q} --part {wildcards.part} {PARTS_OPTIONS}"
            " --workers {threads} 2>&1 | tee {log:q}"

    rule segment:
        input:
            patches=layout.level_patches(RESULTS, "{level}"),
            plan=layout.parts_plan(layout.segments(RESULTS, "{level}")),
            parts=expand(
                layout.part_record(layout.segments(RESULTS, "{{level}}"), "{part}"),
                part=range(N_PARTS),
            ),
        output:
            directory(layout.segments(RESULTS, "{level}")),
        params:
            config=config_json("segmentation"),
            patches=lambda wildcards: layout.level_patches(RESULTS, wildcards.level),
            store=lambda wildcards: layout.segments(RESULTS, wildcards.level),
        resources:
            mem_mb=2000,
            runtime=15,
        log:
            layout.log(RESULTS, "segment_{level}"),
        benchmark:
            layout.benchmark(RESULTS, "segment", "segment_{level}"),
        conda:
            "../envs/data.yaml"
        shell:
            "python -m cosmo_sop segment --input {params.patches:q} --output {params.store:q}"
            " --config-json {params.config:q} --part finish {PARTS_OPTIONS} 2>&1 | tee {log:q}"

else:

    rule segment:
        input:
            layout.level_patches(RESULTS, "{level}"),
        output:
            directory(layout.segments(RESULTS, "{level}")),
        params:
            config=config_json("segmentation"),
        threads: workflow.cores
        resources:
            mem_mb=2000,
            runtime=30,
        log:
            layout.log(RESULTS, "segment_{level}"),
        benchmark:
            layout.benchmark(RESULTS, "segment", "segment_{level}"),
        conda:
            "../envs/data.yaml"
        shell:
            "python -m cosmo_sop segment --input {input:q} --output {output:q}"
            " --config-json {params.config:q} --workers {threads} 2>&1 | tee {log:q}"


rule plot_segments:
    input:
        patches=layout.level_patches(RESULTS, "{level}"),
        segments=layout.segments(RESULTS, "{level}"),
    output:
        report(
            layout.level_figures(RESULTS, "{level}") / layout.SEGMENTS_FIGURE,
            caption="../report/segments.rst",
            category="Data",
            subcategory="{level}",
        ),
    log:
        layout.log(RESULTS, "plot_segments_{level}"),
    benchmark:
        layout.benchmark(RESULTS, "plot_segments", "plot_segments_{level}"),
    conda:
        "../envs/data.yaml"
    shell:
        "python -m cosmo_sop plot-segments --patches {input.patches:q} --segments {input.segments:q}"
        " --output {output:q} 2>&1 | tee {log:q}"
