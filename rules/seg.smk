# Final segmentation on the pseudo masks (optional: seg.enabled), its evaluation under the
# seg_eval protocol, the VOC test-server export (optional target `export_voc_test`), the
# summary table and the RITC ablation table (optional target `ablation`).

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
        history=f"{RESULTS}/train_logs/seg.parquet",
        json=f"{RESULTS}/models/seg_training.json",
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
        " --out-history {output.history}"
        " {params.flags} > {log} 2>&1"


rule eval_seg:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
        model=f"{RESULTS}/models/seg.pt",
        training=f"{RESULTS}/models/seg_training.json",
    output:
        json=report(
            f"{RESULTS}/eval/seg.json",
            caption="../report/seg.rst",
            category="3. Segmentation",
        ),
    log:
        f"{LOGS}/eval_seg.log",
    benchmark:
        f"{BENCH}/eval_seg.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: config["seg_eval"]["threads"]
    resources:
        gpu=config["seg_eval"]["gpu"],
        mem_mb=MEM["eval_seg"],
        runtime=240,
    params:
        **stage(
            "qaclims.eval_seg",
            {"split": DATASET["seg_split"], **seg_eval_values()},
            threads_flag="threads",
        ),
    shell:
        "OMP_NUM_THREADS={threads} python -m qaclims.gpu_binding {resources.gpu} --"
        " python -m qaclims eval_seg --manifest {input.manifest} --classes {input.classes}"
        " --model {input.model} --training {input.training} --out-json {output.json}"
        " {params.flags} > {log} 2>&1"


if DATASET["kind"] == "voc12":

    # The VOC2012 test download unpacks into a VOC2012 folder (dataset.test_root, or
    # dataset.root itself): its list is an input, so a missing one is named by Snakemake.
    VOC_TEST = Path(DATASET["test_root"] or DATASET["root"])

    rule export_voc_test:
        input:
            classes=f"{RESULTS}/classes.parquet",
            model=f"{RESULTS}/models/seg.pt",
            test_list=VOC_TEST / "ImageSets/Segmentation/test.txt",
        output:
            folder=directory(f"{RESULTS}/voc_test/results"),
            tar=f"{RESULTS}/voc_test/results.tgz",
        log:
            f"{LOGS}/export_voc_test.log",
        benchmark:
            f"{BENCH}/export_voc_test.tsv"
        conda:
            "../envs/qaclims.yaml"
        threads: config["seg_eval"]["threads"]
        resources:
            gpu=config["seg_eval"]["gpu"],
            mem_mb=MEM["eval_seg"],
            runtime=240,
        params:
            **stage(
                "qaclims.export_voc",
                {"images": str(VOC_TEST / "JPEGImages"), **seg_eval_values()},
                threads_flag="threads",
            ),
        shell:
            "OMP_NUM_THREADS={threads} python -m qaclims.gpu_binding {resources.gpu} --"
            " python -m qaclims export_voc --model {input.model} --classes {input.classes}"
            " --test-list {input.test_list} --out-dir {output.folder} --out-tar {output.tar}"
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
