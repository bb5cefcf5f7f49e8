# The models, per noise level: the CNN backbone, its X-DNN twin (for X-Gradient) and the
# Sum-of-Parts model around the frozen backbone. Interrupted training resumes from the run
# folder's checkpoint; `resources: gpu` (and `nodes`) let a cluster profile ask for GPUs.
# TRAIN_LAUNCH (params.launch) starts the training commands: `python`, or with `training.gpus` > 1
# `torchrun` with a process per GPU (data-parallel, cosmo_sop/training/distributed.py); it is
# chosen in cosmo_sop/launch.py, for these rules and the ViT's in tasks.smk.
from cosmo_sop.launch import training_launcher

TRAIN_LAUNCH = training_launcher(config["training"]["gpus"], config["training"]["nodes"])


rule train_backbone:
    input:
        layout.level_patches(RESULTS, "{level}"),
    output:
        weights=layout.model_dir(RESULTS, "{level}", "{model}") / layout.WEIGHTS,
        metrics=layout.model_dir(RESULTS, "{level}", "{model}") / layout.METRICS,
        test=layout.model_dir(RESULTS, "{level}", "{model}") / layout.TEST_METRICS,
    wildcard_constraints:
        model="backbone|xdnn",
    params:
        config=config_json("backbone", "training"),
        run_dir=lambda wildcards, output: Path(output.weights).parent,
        launch=TRAIN_LAUNCH,
        command=lambda wildcards: "train-xdnn" if wildcards.model == "xdnn" else "train-backbone",
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["training"]["gpus"],
        nodes=config["training"]["nodes"],
    log:
        layout.log(RESULTS, "train_{model}_{level}"),
    benchmark:
        layout.benchmark(RESULTS, "train_backbone", "train_{model}_{level}"),
    conda:
        "../envs/models.yaml"
    shell:
        "{params.launch} -m cosmo_sop {params.command} --patches {input:q}"
        " --output {params.run_dir:q} --restart-stale"
        " --config-json {params.config:q} 2>&1 | tee {log:q}"


rule train_sop:
    input:
        unpack(sop_segments),
        patches=layout.level_patches(RESULTS, "{level}"),
        backbone=layout.model_dir(RESULTS, "{level}", "backbone") / layout.WEIGHTS,
        backbone_test=layout.model_dir(RESULTS, "{level}", "backbone") / layout.TEST_METRICS,
    output:
        weights=layout.model_dir(RESULTS, "{level}", "sop") / layout.WEIGHTS,
        metrics=layout.model_dir(RESULTS, "{level}", "sop") / layout.METRICS,
        test=layout.model_dir(RESULTS, "{level}", "sop") / layout.TEST_METRICS,
    params:
        config=config_json("training", "sop"),
        backbone_dir=lambda wildcards, input: Path(input.backbone).parent,
        segments=lambda wildcards, input: (
            f"--segments {shlex.quote(input.segments)}" if "segments" in input.keys() else ""
        ),
        run_dir=lambda wildcards, output: Path(output.weights).parent,
        launch=TRAIN_LAUNCH,
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["training"]["gpus"],
        nodes=config["training"]["nodes"],
    log:
        layout.log(RESULTS, "train_sop_{level}"),
    benchmark:
        layout.benchmark(RESULTS, "train_sop", "train_sop_{level}"),
    conda:
        "../envs/models.yaml"
    shell:
        "{params.launch} -m cosmo_sop train-sop --patches {input.patches:q} {params.segments}"
        " --backbone {params.backbone_dir:q} --output {params.run_dir:q} --restart-stale"
        " --config-json {params.config:q} 2>&1 | tee {log:q}"


# SOP at other group sizes tau (config key `sop.sweep_keep_fractions`) on the first noise level:
# the report's trade-off of MSE against sparsity.
rule train_sop_sweep:
    input:
        unpack(sop_segments),
        patches=layout.level_patches(RESULTS, "{level}"),
        backbone=layout.model_dir(RESULTS, "{level}", "backbone") / layout.WEIGHTS,
        backbone_test=layout.model_dir(RESULTS, "{level}", "backbone") / layout.TEST_METRICS,
    output:
        weights=layout.sweep_model_dir(RESULTS, "{level}", "{tau}") / layout.WEIGHTS,
        test=layout.sweep_model_dir(RESULTS, "{level}", "{tau}") / layout.TEST_METRICS,
    wildcard_constraints:
        tau=r"[0-9][0-9.eE+-]*",
    params:
        config=lambda wildcards: sweep_config_json(float(wildcards.tau)),
        backbone_dir=lambda wildcards, input: Path(input.backbone).parent,
        segments=lambda wildcards, input: (
            f"--segments {shlex.quote(input.segments)}" if "segments" in input.keys() else ""
        ),
        run_dir=lambda wildcards, output: Path(output.weights).parent,
        launch=TRAIN_LAUNCH,
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["training"]["gpus"],
        nodes=config["training"]["nodes"],
    log:
        layout.log(RESULTS, "train_sop_sweep_{level}_{tau}"),
    benchmark:
        layout.benchmark(RESULTS, "train_sop_sweep", "train_sop_sweep_{level}_{tau}"),
    conda:
        "../envs/models.yaml"
    shell:
        "{params.launch} -m cosmo_sop train-sop --patches {input.patches:q} {params.segments}"
        " --backbone {params.backbone_dir:q} --output {params.run_dir:q} --restart-stale"
        " --config-json {params.config:q} 2>&1 | tee {log:q}"


rule plot_training:
    input:
        layout.model_dir(RESULTS, "{level}", "{model}") / layout.METRICS,
    output:
        report(
            layout.training_figure(RESULTS, "{level}", "{model}"),
            caption="../report/training.rst",
            category="Training",
            subcategory="{level}",
        ),
    log:
        layout.log(RESULTS, "plot_training_{model}_{level}"),
    benchmark:
        layout.benchmark(RESULTS, "plot_training", "plot_training_{model}_{level}"),
    conda:
        "../envs/models.yaml"
    shell:
        "python -m cosmo_sop plot-training --metrics {input:q} --output {output:q} 2>&1 | tee {log:q}"
