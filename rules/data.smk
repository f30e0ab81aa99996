# Data: the demo dataset (demo configs only) and the manifest of any dataset.


if IS_DEMO:

    rule demo_data:
        output:
            directory(DATASET["root"]),
        log:
            f"{LOGS}/demo_data.log",
        benchmark:
            f"{BENCH}/demo_data.tsv"
        conda:
            "../envs/qaclims.yaml"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        params:
            seed=config["demo"]["seed"],
            train=config["demo"]["train_images"],
            val=config["demo"]["val_images"],
            size=config["demo"]["image_size"],
            code=code_digest("qaclims.datasets.demo"),
        shell:
            "python -m qaclims demo_data --out {output} --seed {params.seed}"
            " --train-images {params.train} --val-images {params.val}"
            " --image-size {params.size} > {log} 2>&1"


rule manifest:
    input:
        root=DATASET["root"] if IS_DEMO else [],
    output:
        **({"gt": directory(f"{RESULTS}/gt_masks")} if IS_COCO else {}),
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
    log:
        f"{LOGS}/manifest.log",
    benchmark:
        f"{BENCH}/manifest.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        kind=DATASET["kind"],
        root=lambda wildcards, input: input.root or DATASET["root"],
        gt=lambda wildcards, output: f"--gt-dir {output.gt}" if IS_COCO else "",
        shards=DATASET["shards"],
        sbd=f"--sbd-root {DATASET['sbd_root']}" if DATASET.get("sbd_root") else "",
        max_images=(
            f"--max-images {DATASET['max_images']}"
            if DATASET.get("max_images")
            else ""
        ),
        verify=(
            "--verify-images"
            if DATASET.get("verify_images", True)
            else "--no-verify-images"
        ),
        code=code_digest("qaclims.manifest"),
    shell:
        "python -m qaclims manifest --kind {params.kind} --root {params.root}"
        " --manifest {output.manifest} --classes {output.classes} {params.gt}"
        " --shards {params.shards} {params.sbd} {params.max_images} {params.verify}"
        " --workers {threads} > {log} 2>&1"
