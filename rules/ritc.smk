# CAM network training: the baseline classifier, then RITC on top of it.
# Checkpoint folders are scratch, not outputs: a restarted job resumes from them.
# A job with N > 1 GPUs runs torchrun with one process per GPU (same global batch).

CAM_WEIGHTS = backbone_source(
    "cam.weights", config["cam"]["depth"], config["cam"]["weights"]
)


rule train_cam:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
        weights=CAM_WEIGHTS.inputs,
    output:
        model=f"{RESULTS}/models/cam_baseline.pt",
        history=f"{RESULTS}/train_logs/cam_baseline.parquet",
    log:
        f"{LOGS}/train_cam.log",
    benchmark:
        f"{BENCH}/train_cam.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: config["cam"]["threads"]
    resources:
        gpu=config["cam"]["gpu"],
        mem_mb=MEM["train_cam"],
        runtime=240,
    params:
        **stage(
            "qaclims.train_cam",
            {
                "split": DATASET["train_split"],
                **section("cam", ("workers", "weights", "released")),
            },
            sources={"weights": CAM_WEIGHTS},
            speed={
                "workers": config["cam"]["workers"],
                "checkpoint_dir": f"{RESULTS}/checkpoints/cam_baseline",
            },
        ),
        launch=lambda wildcards, resources: torch_launch(resources.gpu),
    shell:
        "OMP_NUM_THREADS={threads} python -m qaclims.gpu_binding {resources.gpu} --"
        " {params.launch} train_cam --manifest {input.manifest}"
        " --classes {input.classes} --out {output.model}"
        " --out-history {output.history} {params.flags} > {log} 2>&1"


# RITC starts from the baseline trained here, or from a released one (cam.released).
BASELINE = source(
    "cam.released",
    config["cam"]["released"] or f"{RESULTS}/models/cam_baseline.pt",
    lambda path: fingerprint.file_identity(
        path, "released CAM network (cam.released)", DIGESTS
    ),
)


OVSEG = source(
    "models.ovseg",
    config["models"]["ovseg"],
    lambda path: fingerprint.file_identity(
        path, "OV-Seg checkpoint (models.ovseg)", DIGESTS
    ),
)


# RITC and its ablations (target `ablation`), by the suffix of their paths: the ritc values
# each changes. Those values are in the variant's settings; its checkpoints have their own
# folder (a run of other settings in the same folder would be removed as superseded).
RITC_VARIANTS = {
    "": {},
    "_no_bg": {"loss_weights": {"brc": 0.0}},  # no background region contrast
    "_label_only": {
        "label_weight": 1.0
    },  # FG text of the class name alone, no VQA answers
}


rule ritc:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
        baseline=BASELINE.inputs,
        fg=f"{RESULTS}/corpus/fg.parquet",
        bg=f"{RESULTS}/corpus/bg.parquet",
        features=f"{RESULTS}/text/features.parquet",
        clip=CLIP_WEIGHTS.inputs,
        clip_config=CLIP_CONFIG.inputs,
        ovseg=OVSEG.inputs,
    output:
        model=f"{RESULTS}/models/ritc{{variant}}.pt",
        history=f"{RESULTS}/train_logs/ritc{{variant}}.parquet",
    log:
        f"{LOGS}/ritc{{variant}}.log",
    benchmark:
        f"{BENCH}/ritc{{variant}}.tsv"
    wildcard_constraints:
        variant=one_of(RITC_VARIANTS),
    conda:
        "../envs/qaclims.yaml"
    threads: config["ritc"]["threads"]
    resources:
        gpu=config["ritc"]["gpu"],
        mem_mb=MEM["ritc"],
        runtime=720,
    params:
        **by_wildcard("variant", {v: ritc_stage(v) for v in RITC_VARIANTS}),
        launch=lambda wildcards, resources: torch_launch(resources.gpu),
    shell:
        "OMP_NUM_THREADS={threads} python -m qaclims.gpu_binding {resources.gpu} --"
        " {params.launch} ritc --manifest {input.manifest} --classes {input.classes}"
        " --corpus-fg {input.fg} --corpus-bg {input.bg}"
        " --features {input.features} --out {output.model}"
        " --out-history {output.history} {params.flags} > {log} 2>&1"
