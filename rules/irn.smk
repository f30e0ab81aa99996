# IRN: boundary/displacement training on the IR labels, pseudo masks per shard, their mIoU.


rule train_irn:
    input:
        **weights_input(config["irn"]["weights"]),
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
        ir_labels=expand(f"{RESULTS}/ir_labels/shard-{{shard}}", shard=SHARDS),
    output:
        f"{RESULTS}/models/irn.pt",
    log:
        f"{LOGS}/train_irn.log",
    benchmark:
        f"{BENCH}/train_irn.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: config["irn"]["threads"]
    resources:
        gpu=config["irn"]["gpu"],
        mem_mb=24000,
        runtime=240,
    params:
        launch=torch_launch(config["irn"]["gpu"]),
        split=DATASET["train_split"],
        checkpoints=f"{RESULTS}/checkpoints/irn",
        depth=config["irn"]["depth"],
        weights=lambda wildcards, input: optional_flag(
            "--weights", getattr(input, "weights", config["irn"]["weights"])
        ),
        crop=config["irn"]["crop_size"],
        scales=config["irn"]["scale_range"],
        radius=config["irn"]["radius"],
        batch=config["irn"]["batch_size"],
        epochs=config["irn"]["epochs"],
        edge_lr=config["irn"]["edge_lr"],
        dp_lr=config["irn"]["displacement_lr"],
        wd=config["irn"]["weight_decay"],
        momentum=config["irn"]["momentum"],
        seed=config["irn"]["seed"],
        workers=config["irn"]["workers"],
        code=code_digest("qaclims.train_irn"),
    shell:
        "OMP_NUM_THREADS={threads} python -m qaclims.gpu_binding {resources.gpu} --"
        " {params.launch} train_irn --manifest {input.manifest} --classes {input.classes}"
        " --ir-labels {input.ir_labels} --out {output} --checkpoint-dir {params.checkpoints}"
        " --split {params.split} --depth {params.depth} {params.weights}"
        " --crop-size {params.crop} --scale-range {params.scales} --radius {params.radius}"
        " --batch-size {params.batch} --epochs {params.epochs} --edge-lr {params.edge_lr}"
        " --displacement-lr {params.dp_lr} --weight-decay {params.wd}"
        " --momentum {params.momentum} --seed {params.seed} --workers {params.workers}"
        " > {log} 2>&1"


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
        mem_mb=8000,
        runtime=120,
    params:
        depth=config["irn"]["depth"],
        radius=config["pseudo_masks"]["radius"],
        beta=config["pseudo_masks"]["beta"],
        exp_times=config["pseudo_masks"]["exp_times"],
        bg=config["pseudo_masks"]["bg_threshold"],
        code=code_digest("qaclims.pseudo_masks"),
    shell:
        "OMP_NUM_THREADS={threads} python -m qaclims.gpu_binding {resources.gpu} --"
        " python -m qaclims pseudo_masks --manifest {input.manifest} --cams {input.cams}"
        " --irn {input.irn} --out {output} --depth {params.depth} --radius {params.radius}"
        " --beta {params.beta} --exp-times {params.exp_times} --bg-threshold {params.bg}"
        " > {log} 2>&1"


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
        mem_mb=2000,
        runtime=30,
    params:
        split=DATASET["eval_split"],
        samples=config["cam_eval"]["vis_images"],
        code=code_digest("qaclims.eval_masks"),
    shell:
        "python -m qaclims eval_masks --manifest {input.manifest} --classes {input.classes}"
        " --masks {input.masks} --split {params.split} --out-json {output.json}"
        " --out-samples {output.samples} --samples {params.samples} > {log} 2>&1"
