# IRN: boundary/displacement training on the IR labels, pseudo masks per shard, their mIoU.

IRN_WEIGHTS = backbone_source(
    "irn.weights", config["irn"]["depth"], config["irn"]["weights"]
)


rule train_irn:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
        ir_labels=expand(f"{RESULTS}/ir_labels/shard-{{shard}}", shard=SHARDS),
        weights=IRN_WEIGHTS.inputs,
    output:
        model=f"{RESULTS}/models/irn.pt",
        history=f"{RESULTS}/train_logs/irn.parquet",
    log:
        f"{LOGS}/train_irn.log",
    benchmark:
        f"{BENCH}/train_irn.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: config["irn"]["threads"]
    resources:
        gpu=config["irn"]["gpu"],
        mem_mb=MEM["train_irn"],
        runtime=240,
    params:
        **stage(
            "qaclims.train_irn",
            {
                "split": DATASET["train_split"],
                **section("irn", ("workers", "weights")),
            },
            sources={"weights": IRN_WEIGHTS},
            speed={
                "workers": config["irn"]["workers"],
                "checkpoint_dir": f"{RESULTS}/checkpoints/irn",
            },
        ),
        launch=lambda wildcards, resources: torch_launch(resources.gpu),
    shell:
        "OMP_NUM_THREADS={threads} python -m qaclims.gpu_binding {resources.gpu} --"
        " {params.launch} train_irn --manifest {input.manifest} --classes {input.classes}"
        " --ir-labels {input.ir_labels} --out {output.model}"
        " --out-history {output.history} {params.flags} > {log} 2>&1"


rule pseudo_masks:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        cams=f"{RESULTS}/cams/shard-{{shard}}.npz",
        irn=f"{RESULTS}/models/irn.pt",
    output:
        directory(f"{RESULTS}/pseudo_masks/shard-{{shard}}"),
    log:
        f"{LOGS}/pseudo_masks/shard-{{shard}}.log",
    benchmark:
        f"{BENCH}/pseudo_masks/shard-{{shard}}.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: config["pseudo_masks"]["threads"]
    resources:
        gpu=config["pseudo_masks"]["gpu"],
        mem_mb=MEM["pseudo_masks"],
        runtime=120,
    params:
        **stage(
            "qaclims.pseudo_masks",
            {"depth": config["irn"]["depth"], **section("pseudo_masks")},
        ),
    shell:
        "OMP_NUM_THREADS={threads} python -m qaclims.gpu_binding {resources.gpu} --"
        " python -m qaclims pseudo_masks --manifest {input.manifest} --cams {input.cams}"
        " --irn {input.irn} --out {output} {params.flags} > {log} 2>&1"


rule eval_masks:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
        masks=expand(f"{RESULTS}/pseudo_masks/shard-{{shard}}", shard=SHARDS),
    output:
        json=report(
            f"{RESULTS}/eval/pseudo_masks.json",
            caption="../report/pseudo_masks.rst",
            category="2. Pseudo masks",
        ),
        samples=report(
            directory(f"{RESULTS}/eval/pseudo_mask_samples"),
            patterns=["{name}.png"],
            caption="../report/pseudo_mask_samples.rst",
            category="2. Pseudo masks",
            subcategory="samples",
        ),
    log:
        f"{LOGS}/eval_masks.log",
    benchmark:
        f"{BENCH}/eval_masks.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: 1
    resources:
        mem_mb=MEM["eval_masks"],
        runtime=30,
    params:
        **stage(
            "qaclims.eval_masks",
            {
                "split": DATASET["eval_split"],
                "samples": config["cam_eval"]["vis_images"],
            },
        ),
    shell:
        "python -m qaclims eval_masks --manifest {input.manifest} --classes {input.classes}"
        " --masks {input.masks} --out-json {output.json} --out-samples {output.samples}"
        " {params.flags} > {log} 2>&1"
