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
            mem_mb=MEM["demo_data"],
            runtime=10,
        params:
            **stage("qaclims.datasets.demo", config["demo"]),
        shell:
            "python -m qaclims demo_data --out {output} {params.flags} > {log} 2>&1"


# The manifest is the dataset's provenance: a rebuilt demo (an input) or, for a real dataset,
# its root's identity (folder and list-file stamps, qaclims/fingerprint.py) reruns it.
DATASET_ROOT = source(
    "dataset.root",
    DATASET["root"],
    lambda root: fingerprint.dataset_identity(
        DATASET["kind"], root, DATASET.get("sbd_root")
    ),
    workflow_builds=IS_DEMO,
)


rule manifest:
    input:
        root=DATASET_ROOT.inputs,
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
        mem_mb=MEM["manifest"],
        runtime=60,
    params:
        **stage(
            "qaclims.manifest",
            {
                "kind": DATASET["kind"],
                "sbd_root": DATASET.get("sbd_root"),
                "max_images": DATASET.get("max_images"),
            },
            sources={"root": DATASET_ROOT},
            speed={"verify_images": DATASET.get("verify_images", True)},
            threads_flag="workers",
        ),
        gt=f"--gt-dir {RESULTS}/gt_masks" if IS_COCO else "",
    shell:
        "python -m qaclims manifest --manifest {output.manifest} --classes {output.classes}"
        " {params.gt} {params.flags} > {log} 2>&1"
