# The science, per noise level: SOP's explanations of the test maps, voids and clusters among
# its groups, faithfulness against post-hoc attributions, and the classical summary statistics.


rule explain:
    input:
        unpack(sop_segments),
        patches=layout.level_patches(RESULTS, "{level}"),
        sop=layout.model_dir(RESULTS, "{level}", "sop") / layout.WEIGHTS,
    output:
        directory(layout.explanations(RESULTS, "{level}")),
    params:
        config=config_json("explain"),
        sop_dir=lambda wildcards, input: Path(input.sop).parent,
        segments=lambda wildcards, input: (
            f"--segments {shlex.quote(input.segments)}" if "segments" in input.keys() else ""
        ),
    # Torch's backbone passes take both cores: ~2x the maps/s of one (benchmarks/backbone_layout.py).
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=min(config["training"]["gpus"], 1),  # one process, one GPU
    log:
        layout.log(RESULTS, "explain_{level}"),
    benchmark:
        layout.benchmark(RESULTS, "explain", "explain_{level}"),
    conda:
        "../envs/models.yaml"
    shell:
        "python -m cosmo_sop explain --sop {params.sop_dir:q} --patches {input.patches:q}"
        " {params.segments} --output {output:q} --config-json {params.config:q} 2>&1 | tee {log:q}"


rule structures:
    input:
        unpack(sop_segments),
        explanations=layout.explanations(RESULTS, "{level}"),
        patches=layout.level_patches(RESULTS, "{level}"),
        sop=layout.model_dir(RESULTS, "{level}", "sop") / layout.WEIGHTS,
    output:
        weights=layout.science_dir(RESULTS, "{level}") / layout.WEIGHTS_CSV,
        verdicts=layout.science_dir(RESULTS, "{level}") / layout.VERDICTS,
        histograms=report(
            layout.science_dir(RESULTS, "{level}") / layout.WEIGHT_HISTOGRAMS,
            caption="../report/weight_histograms.rst",
            category="Voids and clusters",
            subcategory="{level}",
        ),
    params:
        # segmentation: its smoothing_pixels is the default smoothing of the map that classifies
        # groups (the CLI fills keys it is not passed with the schema defaults, not the config)
        config=config_json("structures", "segmentation"),
        out_dir=lambda wildcards, output: Path(output.weights).parent,
        sop_dir=lambda wildcards, input: Path(input.sop).parent,
        segments=lambda wildcards, input: (
            f"--segments {shlex.quote(input.segments)}" if "segments" in input.keys() else ""
        ),
    # Mostly the random-group null's backbone passes (torch): both cores, as explain.
    threads: workflow.cores
    log:
        layout.log(RESULTS, "structures_{level}"),
    benchmark:
        layout.benchmark(RESULTS, "structures", "structures_{level}"),
    conda:
        "../envs/models.yaml"
    shell:
        "python -m cosmo_sop structures --explanations {input.explanations:q}"
        " --patches {input.patches:q} --sop {params.sop_dir:q} {params.segments}"
        " --output-dir {params.out_dir:q}"
        " --config-json {params.config:q} 2>&1 | tee {log:q}"


rule faithfulness:
    input:
        explanations=layout.explanations(RESULTS, "{level}"),
        patches=layout.level_patches(RESULTS, "{level}"),
        segments=layout.segments(RESULTS, "{level}"),
        backbone=layout.model_dir(RESULTS, "{level}", "backbone") / layout.WEIGHTS,
        xdnn=layout.model_dir(RESULTS, "{level}", "xdnn") / layout.WEIGHTS,
        sop=layout.model_dir(RESULTS, "{level}", "sop") / layout.WEIGHTS,
    output:
        table=layout.science_dir(RESULTS, "{level}") / layout.FAITHFULNESS_CSV,
        curves=report(
            layout.science_dir(RESULTS, "{level}") / layout.FAITHFULNESS_CURVES,
            caption="../report/faithfulness.rst",
            category="Faithfulness",
            subcategory="{level}",
        ),
    params:
        # segmentation: as for rule structures, the map that classifies purity cells
        config=config_json("evaluation", "structures", "segmentation"),
        out_dir=lambda wildcards, output: Path(output.table).parent,
        backbone_dir=lambda wildcards, input: Path(input.backbone).parent,
        xdnn_dir=lambda wildcards, input: Path(input.xdnn).parent,
        sop_dir=lambda wildcards, input: Path(input.sop).parent,
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=min(config["training"]["gpus"], 1),  # one process, one GPU
    log:
        layout.log(RESULTS, "faithfulness_{level}"),
    benchmark:
        layout.benchmark(RESULTS, "faithfulness", "faithfulness_{level}"),
    conda:
        "../envs/models.yaml"
    shell:
        "python -m cosmo_sop faithfulness --explanations {input.explanations:q}"
        " --patches {input.patches:q} --segments {input.segments:q}"
        " --backbone {params.backbone_dir:q} --xdnn {params.xdnn_dir:q} --sop {params.sop_dir:q}"
        " --output-dir {params.out_dir:q} --config-json {params.config:q} 2>&1 | tee {log:q}"


rule summary_statistics:
    input:
        layout.level_patches(RESULTS, "{level}"),
    output:
        layout.summary_statistics(RESULTS, "{level}"),
    params:
        config=config_json("summary_statistics"),
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        layout.log(RESULTS, "summary_statistics_{level}"),
    benchmark:
        layout.benchmark(RESULTS, "summary_statistics", "summary_statistics_{level}"),
    conda:
        "../envs/models.yaml"
    shell:
        "python -m cosmo_sop summary-statistics --patches {input:q} --output {output:q}"
        " --config-json {params.config:q} --workers {threads} 2>&1 | tee {log:q}"


rule report:
    input:
        science_outputs(),
        benchmarks=job_benchmarks,
    output:
        report(layout.report(RESULTS), caption="../report/report.rst", category="Report"),
    params:
        config=json.dumps(config, sort_keys=True),
        levels=NOISE_LEVELS,
        results=RESULTS,
    log:
        layout.log(RESULTS, "report"),
    benchmark:
        layout.benchmark(RESULTS, "report"),
    conda:
        "../envs/models.yaml"
    shell:
        "python -m cosmo_sop report --results {params.results:q} --levels {params.levels:q}"
        " --benchmarks {input.benchmarks:q} --output {output:q} --config-json {params.config:q}"
        " 2>&1 | tee {log:q}"
