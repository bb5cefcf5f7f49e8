# Watershed (or patch / SLIC) segments of every noisy patch: the tokens of the SOP model and
# the units that are later classified as voids and clusters.


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
    conda:
        "../envs/data.yaml"
    shell:
        "python -m cosmo_sop plot-segments --patches {input.patches:q} --segments {input.segments:q}"
        " --output {output:q} 2>&1 | tee {log:q}"
