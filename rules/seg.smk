# Final segmentation on the pseudo masks (optional: seg.enabled), the summary table and the
# RITC ablation table (optional target `ablation`).

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
        mem_mb=MEM["train_seg"],
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


# (row name, evaluation report) of each table, in its order.
SUMMARY_ROWS = [
    *cam_rows(["_baseline", ""]),
    ("pseudo mask", f"{RESULTS}/eval/pseudo_masks.json"),
    *(
        [("segmentation", f"{RESULTS}/eval/seg.json")]
        if config["seg"]["enabled"]
        else []
    ),
]
ABLATION_ROWS = cam_rows(["_baseline", "", "_ritc_no_bg", "_ritc_label_only"])


rule summary:
    input:
        [path for _, path in SUMMARY_ROWS],
    output:
        md=report(
            f"{RESULTS}/eval/summary.md",
            caption="../report/summary.rst",
            category="0. Summary",
        ),
        json=f"{RESULTS}/eval/summary.json",
    log:
        f"{LOGS}/summary.log",
    benchmark:
        f"{BENCH}/summary.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: 1
    resources:
        mem_mb=MEM["summary"],
        runtime=5,
    params:
        **stage("qaclims.summary", {"stages": [name for name, _ in SUMMARY_ROWS]}),
    shell:
        "python -m qaclims summary --reports {input} --out-md {output.md}"
        " --out-json {output.json} {params.flags} > {log} 2>&1"


use rule summary as ablation with:
    input:
        [path for _, path in ABLATION_ROWS],
    output:
        md=report(
            f"{RESULTS}/eval/ablation.md",
            caption="../report/ablation.rst",
            category="0. Summary",
        ),
        json=f"{RESULTS}/eval/ablation.json",
    log:
        f"{LOGS}/ablation.log",
    benchmark:
        f"{BENCH}/ablation.tsv"
    params:
        **stage("qaclims.summary", {"stages": [name for name, _ in ABLATION_ROWS]}),
