# Final segmentation on the pseudo masks (optional: seg.enabled) and the summary table.

SEG_WEIGHTS = backbone_source(
    "seg.weights", config["seg"]["depth"], config["seg"]["weights"]
)


rule train_seg:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
        masks=expand(f"{RESULTS}/pseudo_masks/shard-{{shard}}", shard=SHARDS),
        weights=SEG_WEIGHTS.inputs,
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
        **stage(
            "qaclims.train_seg",
            {
                "train_split": DATASET["train_split"],
                "eval_split": DATASET["seg_split"],
                **section("seg", ("enabled", "workers", "weights")),
            },
            sources={"weights": SEG_WEIGHTS},
            speed={
                "workers": config["seg"]["workers"],
                "checkpoint_dir": f"{RESULTS}/checkpoints/seg",
            },
        ),
        launch=lambda wildcards, resources: torch_launch(resources.gpu),
    shell:
        "OMP_NUM_THREADS={threads} python -m qaclims.gpu_binding {resources.gpu} --"
        " {params.launch} train_seg --manifest {input.manifest} --classes {input.classes}"
        " --masks {input.masks} --out {output.model} --out-json {output.json}"
        " {params.flags} > {log} 2>&1"


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
        **stage("qaclims.summary", {}),
        seg=lambda wildcards, input: f"--seg {input.seg}" if input.seg else "",
    shell:
        "python -m qaclims summary --cam {input.cam} --pseudo-masks {input.masks}"
        " {params.seg} --out {output} > {log} 2>&1"
