# Final segmentation on the pseudo masks (optional: seg.enabled) and the summary table.


rule train_seg:
    input:
        **weights_input(config["seg"]["weights"]),
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
        masks=expand(f"{RESULTS}/pseudo_masks/shard-{{shard}}", shard=SHARDS),
    output:
        model=f"{RESULTS}/models/seg.pt",
        json=report(
            f"{RESULTS}/eval/seg.json",
            caption="../report/seg.rst",
            category="3. Segmentation",
        ),
    log:
        f"{LOGS}/train_seg.log",
    benchmark:
        f"{BENCH}/train_seg.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: config["seg"]["threads"]
    resources:
        gpu=config["seg"]["gpu"],
        mem_mb=24000,
        runtime=720,
    params:
        launch=torch_launch(config["seg"]["gpu"]),
        train_split=DATASET["train_split"],
        eval_split=DATASET["seg_split"],
        checkpoints=f"{RESULTS}/checkpoints/seg",
        depth=config["seg"]["depth"],
        weights=lambda wildcards, input: optional_flag(
            "--weights", getattr(input, "weights", config["seg"]["weights"])
        ),
        crop=config["seg"]["crop_size"],
        scales=config["seg"]["scale_range"],
        batch=config["seg"]["batch_size"],
        epochs=config["seg"]["epochs"],
        lr=config["seg"]["lr"],
        head_lr=config["seg"]["head_lr"],
        wd=config["seg"]["weight_decay"],
        momentum=config["seg"]["momentum"],
        seed=config["seg"]["seed"],
        workers=config["seg"]["workers"],
        code=code_digest("qaclims.train_seg"),
    shell:
        "OMP_NUM_THREADS={threads} python -m qaclims.gpu_binding {resources.gpu} --"
        " {params.launch} train_seg --manifest {input.manifest} --classes {input.classes}"
        " --masks {input.masks} --out {output.model} --out-json {output.json}"
        " --checkpoint-dir {params.checkpoints} --train-split {params.train_split}"
        " --eval-split {params.eval_split} --depth {params.depth} {params.weights}"
        " --crop-size {params.crop} --scale-range {params.scales} --batch-size {params.batch}"
        " --epochs {params.epochs} --lr {params.lr} --head-lr {params.head_lr}"
        " --weight-decay {params.wd} --momentum {params.momentum} --seed {params.seed}"
        " --workers {params.workers} > {log} 2>&1"


rule summary:
    input:
        cam=f"{RESULTS}/eval/cam.json",
        masks=f"{RESULTS}/eval/pseudo_masks.json",
        seg=f"{RESULTS}/eval/seg.json" if config["seg"]["enabled"] else [],
    output:
        report(
            f"{RESULTS}/eval/summary.md",
            caption="../report/summary.rst",
            category="0. Summary",
        ),
    log:
        f"{LOGS}/summary.log",
    benchmark:
        f"{BENCH}/summary.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        seg=lambda wildcards, input: f"--seg {input.seg}" if input.seg else "",
        code=code_digest("qaclims.summary"),
    shell:
        "python -m qaclims summary --cam {input.cam} --pseudo-masks {input.masks}"
        " {params.seg} --out {output} > {log} 2>&1"
