# The further tasks (config key `tasks`, none in the demo): the science run again with a ViT
# backbone on the same maps (vit_maps), a ViT classifier of images with exact object masks
# (vit_images) and a pretrained MiniLM encoder on reading comprehension (bert_text). The ViT
# rules are the CNN's rules (`use rule`) on the tree results/vit_maps/<level>/; the X-DNN of
# the ViT's faithfulness table is the CNN's twin (a ViT has none: attention is not homogeneous).
# The ViT's training is launched like the CNN's (TRAIN_LAUNCH, train.smk: torchrun on several
# GPUs); the image and text task jobs, which train and evaluate several models, run in one
# process whatever `training.gpus`.

rule train_vit_maps_backbone:
    input:
        layout.level_patches(RESULTS, "{level}"),
    output:
        weights=layout.model_dir(VIT_ROOT, "{level}", "backbone") / layout.WEIGHTS,
        metrics=layout.model_dir(VIT_ROOT, "{level}", "backbone") / layout.METRICS,
        test=layout.model_dir(VIT_ROOT, "{level}", "backbone") / layout.TEST_METRICS,
    params:
        config=vit_config_json("vit", "training"),
        run_dir=lambda wildcards, output: Path(output.weights).parent,
        launch=TRAIN_LAUNCH,
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["training"]["gpus"],
        nodes=config["training"]["nodes"],
    log:
        layout.log(RESULTS, "train_vit_maps_backbone_{level}"),
    benchmark:
        layout.benchmark(RESULTS, "train_vit_maps_backbone", "train_vit_maps_backbone_{level}"),
    conda:
        "../envs/models.yaml"
    shell:
        "{params.launch} -m cosmo_sop train-vit --patches {input:q}"
        " --output {params.run_dir:q} --restart-stale"
        " --config-json {params.config:q} 2>&1 | tee {log:q}"


use rule train_sop as train_vit_maps_sop with:
    input:
        unpack(vit_sop_segments),
        patches=layout.level_patches(RESULTS, "{level}"),
        backbone=layout.model_dir(VIT_ROOT, "{level}", "backbone") / layout.WEIGHTS,
        backbone_test=layout.model_dir(VIT_ROOT, "{level}", "backbone") / layout.TEST_METRICS,
    output:
        weights=layout.model_dir(VIT_ROOT, "{level}", "sop") / layout.WEIGHTS,
        metrics=layout.model_dir(VIT_ROOT, "{level}", "sop") / layout.METRICS,
        test=layout.model_dir(VIT_ROOT, "{level}", "sop") / layout.TEST_METRICS,
    params:
        config=vit_config_json("training", "sop"),
        backbone_dir=lambda wildcards, input: Path(input.backbone).parent,
        segments=lambda wildcards, input: (
            f"--segments {shlex.quote(input.segments)}" if "segments" in input.keys() else ""
        ),
        run_dir=lambda wildcards, output: Path(output.weights).parent,
        launch=TRAIN_LAUNCH,
    log:
        layout.log(RESULTS, "train_vit_maps_sop_{level}"),
    benchmark:
        layout.benchmark(RESULTS, "train_vit_maps_sop", "train_vit_maps_sop_{level}"),


use rule plot_training as plot_training_vit_maps with:
    input:
        layout.model_dir(VIT_ROOT, "{level}", "{model}") / layout.METRICS,
    output:
        report(
            layout.training_figure(VIT_ROOT, "{level}", "{model}"),
            caption="../report/training.rst",
            category="Training",
            subcategory="{level} (ViT)",
        ),
    log:
        layout.log(RESULTS, "plot_training_vit_maps_{model}_{level}"),
    benchmark:
        layout.benchmark(
            RESULTS, "plot_training_vit_maps", "plot_training_vit_maps_{model}_{level}"
        ),


use rule explain as explain_vit_maps with:
    input:
        unpack(vit_sop_segments),
        patches=layout.level_patches(RESULTS, "{level}"),
        sop=layout.model_dir(VIT_ROOT, "{level}", "sop") / layout.WEIGHTS,
    output:
        directory(layout.explanations(VIT_ROOT, "{level}")),
    log:
        layout.log(RESULTS, "explain_vit_maps_{level}"),
    benchmark:
        layout.benchmark(RESULTS, "explain_vit_maps", "explain_vit_maps_{level}"),


use rule structures as structures_vit_maps with:
    input:
        unpack(vit_sop_segments),
        explanations=layout.explanations(VIT_ROOT, "{level}"),
        patches=layout.level_patches(RESULTS, "{level}"),
        sop=layout.model_dir(VIT_ROOT, "{level}", "sop") / layout.WEIGHTS,
    output:
        weights=layout.science_dir(VIT_ROOT, "{level}") / layout.WEIGHTS_CSV,
        verdicts=layout.science_dir(VIT_ROOT, "{level}") / layout.VERDICTS,
        histograms=report(
            layout.science_dir(VIT_ROOT, "{level}") / layout.WEIGHT_HISTOGRAMS,
            caption="../report/weight_histograms.rst",
            category="Voids and clusters",
            subcategory="{level} (ViT)",
        ),
    log:
        layout.log(RESULTS, "structures_vit_maps_{level}"),
    benchmark:
        layout.benchmark(RESULTS, "structures_vit_maps", "structures_vit_maps_{level}"),


use rule faithfulness as faithfulness_vit_maps with:
    input:
        explanations=layout.explanations(VIT_ROOT, "{level}"),
        patches=layout.level_patches(RESULTS, "{level}"),
        segments=layout.segments(RESULTS, "{level}"),
        backbone=layout.model_dir(VIT_ROOT, "{level}", "backbone") / layout.WEIGHTS,
        xdnn=layout.model_dir(RESULTS, "{level}", "xdnn") / layout.WEIGHTS,
        sop=layout.model_dir(VIT_ROOT, "{level}", "sop") / layout.WEIGHTS,
    output:
        table=layout.science_dir(VIT_ROOT, "{level}") / layout.FAITHFULNESS_CSV,
        curves=report(
            layout.science_dir(VIT_ROOT, "{level}") / layout.FAITHFULNESS_CURVES,
            caption="../report/faithfulness.rst",
            category="Faithfulness",
            subcategory="{level} (ViT)",
        ),
    params:
        config=vit_config_json("evaluation", "structures", "segmentation"),
        out_dir=lambda wildcards, output: Path(output.table).parent,
        backbone_dir=lambda wildcards, input: Path(input.backbone).parent,
        xdnn_dir=lambda wildcards, input: Path(input.xdnn).parent,
        sop_dir=lambda wildcards, input: Path(input.sop).parent,
    log:
        layout.log(RESULTS, "faithfulness_vit_maps_{level}"),
    benchmark:
        layout.benchmark(RESULTS, "faithfulness_vit_maps", "faithfulness_vit_maps_{level}"),


# The image and text tasks: one job each, which generates (or reads) its data, trains its
# backbone and SOP, and evaluates them into results/<task>/task_metrics.json.
rule task_vit_images:
    output:
        layout.task_metrics(RESULTS, "vit_images"),
    params:
        config=config_json("training", "vit_images"),
        out_dir=lambda wildcards, output: Path(output[0]).parent,
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=min(config["training"]["gpus"], 1),  # one process, one GPU
    log:
        layout.log(RESULTS, "task_vit_images"),
    benchmark:
        layout.benchmark(RESULTS, "task_vit_images"),
    conda:
        "../envs/models.yaml"
    shell:
        "python -m cosmo_sop task-images --output-dir {params.out_dir:q}"
        " --config-json {params.config:q} 2>&1 | tee {log:q}"


rule task_bert_text:
    output:
        layout.task_metrics(RESULTS, "bert_text"),
    params:
        config=config_json("training", "bert_text"),
        out_dir=lambda wildcards, output: Path(output[0]).parent,
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=min(config["training"]["gpus"], 1),  # one process, one GPU
    log:
        layout.log(RESULTS, "task_bert_text"),
    benchmark:
        layout.benchmark(RESULTS, "task_bert_text"),
    conda:
        "../envs/models.yaml"
    shell:
        "python -m cosmo_sop task-text --output-dir {params.out_dir:q}"
        " --config-json {params.config:q} 2>&1 | tee {log:q}"
