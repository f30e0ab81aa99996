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
        split=DATASET["train_split"],
        depth=config["cam"]["depth"],
        scales=config["cam_infer"]["scales"],
        storage=config["cam_infer"]["storage"],
        batch=config["cam_infer"]["batch_images"],
        code=code_digest("qaclims.cams"),
    shell:
        "python -m qaclims.gpu_binding {resources.gpu} --"
        " python -m qaclims cams --manifest {input.manifest} --classes {input.classes}"
        " --model {input.model} --out {output} --split {params.split} --shard {wildcards.shard}"
        " --depth {params.depth} --scales {params.scales} --storage {params.storage}"
        " --batch-images {params.batch} --workers {threads} > {log} 2>&1"


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
        split=DATASET["eval_split"],
        t=config["cam_eval"]["bg_threshold"],
        start=config["cam_eval"]["sweep_start"],
        stop=config["cam_eval"]["sweep_stop"],
        step=config["cam_eval"]["sweep_step"],
        vis=config["cam_eval"]["vis_images"],
        code=code_digest("qaclims.eval_cam"),
    shell:
        "python -m qaclims eval_cam --manifest {input.manifest} --classes {input.classes}"
        " --cams {input.cams} --split {params.split} --bg-threshold {params.t}"
        " --sweep-start {params.start} --sweep-stop {params.stop} --sweep-step {params.step}"
        " --vis-images {params.vis} --out-json {output.json} --out-csv {output.csv}"
        " --out-bars {output.bars} --out-vis {output.vis} > {log} 2>&1"
