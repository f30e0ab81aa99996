# CAM network training: the baseline classifier, then RITC on top of it.
# Checkpoint folders are scratch, not outputs: a restarted job resumes from them.
# A job with N > 1 GPUs runs torchrun with one process per GPU (same global batch).

CAM_NET_DEPTH = config["cam"]["depth"]


rule train_cam:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
    output:
        f"{RESULTS}/models/cam_baseline.pt",
    log:
        f"{LOGS}/train_cam.log",
    benchmark:
        f"{BENCH}/train_cam.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: config["cam"]["threads"]
    resources:
        gpu=config["cam"]["gpu"],
        mem_mb=16000,
        runtime=240,
    params:
        launch=torch_launch(config["cam"]["gpu"]),
        checkpoints=f"{RESULTS}/checkpoints/cam_baseline",
        split=DATASET["train_split"],
        depth=config["cam"]["depth"],
        weights=optional_flag("--weights", config["cam"]["weights"]),
        crop=config["cam"]["crop_size"],
        resize=config["cam"]["resize_range"],
        batch=config["cam"]["batch_size"],
        epochs=config["cam"]["epochs"],
        lr=config["cam"]["lr"],
        classifier_lr=config["cam"]["classifier_lr"],
        weight_decay=config["cam"]["weight_decay"],
        momentum=config["cam"]["momentum"],
        poly_power=config["cam"]["poly_power"],
        seed=config["cam"]["seed"],
        workers=config["cam"]["workers"],
        code=code_digest("qaclims.train_cam"),
    shell:
        "OMP_NUM_THREADS={threads} python -m qaclims.gpu_binding {resources.gpu} --"
        " {params.launch} train_cam --manifest {input.manifest}"
        " --classes {input.classes} --out {output} --checkpoint-dir {params.checkpoints}"
        " --split {params.split} --depth {params.depth} {params.weights}"
        " --crop-size {params.crop} --resize-range {params.resize}"
        " --batch-size {params.batch} --epochs {params.epochs} --lr {params.lr}"
        " --classifier-lr {params.classifier_lr} --weight-decay {params.weight_decay}"
        " --momentum {params.momentum} --poly-power {params.poly_power}"
        " --seed {params.seed} --workers {params.workers} > {log} 2>&1"


rule ritc:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
        baseline=f"{RESULTS}/models/cam_baseline.pt",
        fg=f"{RESULTS}/corpus/fg.parquet",
        bg=f"{RESULTS}/corpus/bg.parquet",
        features=f"{RESULTS}/text/features.parquet",
        clip=config["models"]["clip"]["pretrained"] if IS_DEMO else [],
        clip_config=config["models"]["clip_config"] if IS_DEMO else [],
        ovseg=config["models"]["ovseg"] or [],
    output:
        f"{RESULTS}/models/ritc.pt",
    log:
        f"{LOGS}/ritc.log",
    benchmark:
        f"{BENCH}/ritc.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: config["ritc"]["threads"]
    resources:
        gpu=config["ritc"]["gpu"],
        mem_mb=32000,
        runtime=720,
    params:
        launch=torch_launch(config["ritc"]["gpu"]),
        checkpoints=f"{RESULTS}/checkpoints/ritc",
        split=DATASET["train_split"],
        depth=CAM_NET_DEPTH,
        architecture=config["models"]["clip"]["architecture"],
        pretrained=lambda wildcards, input: (
            input.clip or config["models"]["clip"]["pretrained"]
        ),
        clip_config=lambda wildcards, input: optional_flag(
            "--clip-config", input.clip_config or config["models"]["clip_config"]
        ),
        ovseg=lambda wildcards, input: optional_flag("--ovseg", input.ovseg or None),
        mode=config["ritc"]["clip_mode"],
        prompt_depth=config["ritc"]["mask_prompt_depth"],
        norm=config["ritc"]["clip_input_norm"],
        batchnorm=config["ritc"]["batchnorm"],
        prompt=config["text"]["prompt"],
        crop=config["ritc"]["crop_size"],
        resize=config["ritc"]["resize_range"],
        batch=config["ritc"]["batch_size"],
        epochs=config["ritc"]["epochs"],
        lr=config["ritc"]["lr"],
        classifier_lr=config["ritc"]["classifier_lr"],
        weight_decay=config["ritc"]["weight_decay"],
        momentum=config["ritc"]["momentum"],
        poly_power=config["ritc"]["poly_power"],
        alpha=config["ritc"]["alpha"],
        tau=config["ritc"]["tau"],
        weights=[config["ritc"]["loss_weights"][k] for k in ("frc", "brc", "reg")],
        divisor=config["ritc"]["pair_sum_divisor"],
        seed=config["ritc"]["seed"],
        workers=config["ritc"]["workers"],
        code=code_digest("qaclims.ritc"),
    shell:
        "OMP_NUM_THREADS={threads} python -m qaclims.gpu_binding {resources.gpu} --"
        " {params.launch} ritc --manifest {input.manifest}"
        " --classes {input.classes} --baseline {input.baseline} --corpus-fg {input.fg}"
        " --corpus-bg {input.bg} --features {input.features} --out {output}"
        " --checkpoint-dir {params.checkpoints} --split {params.split}"
        " --depth {params.depth} --clip-architecture {params.architecture:q}"
        " --clip-pretrained {params.pretrained:q} {params.clip_config}"
        " {params.ovseg} --clip-mode {params.mode}"
        " --mask-prompt-depth {params.prompt_depth} --clip-input-norm {params.norm}"
        " --batchnorm {params.batchnorm}"
        " --prompt {params.prompt:q} --crop-size {params.crop}"
        " --resize-range {params.resize} --batch-size {params.batch}"
        " --epochs {params.epochs} --lr {params.lr} --classifier-lr {params.classifier_lr}"
        " --weight-decay {params.weight_decay} --momentum {params.momentum}"
        " --poly-power {params.poly_power} --alpha {params.alpha} --tau {params.tau}"
        " --loss-weights {params.weights} --pair-sum-divisor {params.divisor}"
        " --seed {params.seed} --workers {params.workers} > {log} 2>&1"
