# CAMs: multi-scale + flip inference per shard (RITC weights), then their evaluation.


rule cams:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
        model=f"{RESULTS}/models/ritc.pt",
    output:
        f"{RESULTS}/cams/shard-{{shard}}.npz",
    log:
        f"{LOGS}/cams/shard-{{shard}}.log",
    benchmark:
        f"{BENCH}/cams/shard-{{shard}}.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: config["cam_infer"]["threads"]
    resources:
        gpu=config["cam_infer"]["gpu"],
        mem_mb=16000,
        runtime=120,
    params:
        **stage(
            "qaclims.cams",
            {
                "split": DATASET["train_split"],
                "shards": DATASET["shards"],
                "depth": config["cam"]["depth"],
                **section("cam_infer", ("batch_images",)),
            },
            speed={"batch_images": config["cam_infer"]["batch_images"]},
            threads_flag="workers",
        ),
    shell:
        "python -m qaclims.gpu_binding {resources.gpu} --"
        " python -m qaclims cams --manifest {input.manifest} --classes {input.classes}"
        " --model {input.model} --out {output} --shard {wildcards.shard}"
        " {params.flags} > {log} 2>&1"


rule eval_cam:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
        cams=expand(f"{RESULTS}/cams/shard-{{shard}}.npz", shard=SHARDS),
    output:
        json=f"{RESULTS}/eval/cam.json",
        csv=report(
            f"{RESULTS}/eval/cam_per_class.csv",
            caption="../report/cam_eval.rst",
            category="1. CAMs",
        ),
        bars=report(
            f"{RESULTS}/eval/cam_iou.png",
            caption="../report/cam_iou.rst",
            category="1. CAMs",
        ),
        vis=report(
            directory(f"{RESULTS}/eval/cam_vis"),
            patterns=["{name}.png"],
            caption="../report/cam_overlays.rst",
            category="1. CAMs",
            subcategory="overlays",
        ),
    log:
        f"{LOGS}/eval_cam.log",
    benchmark:
        f"{BENCH}/eval_cam.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        **stage(
            "qaclims.eval_cam",
            {"split": DATASET["eval_split"], **section("cam_eval")},
        ),
    shell:
        "python -m qaclims eval_cam --manifest {input.manifest} --classes {input.classes}"
        " --cams {input.cams} --out-json {output.json} --out-csv {output.csv}"
        " --out-bars {output.bars} --out-vis {output.vis} {params.flags} > {log} 2>&1"
