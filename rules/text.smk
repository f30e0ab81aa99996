# Text features: CLIP embeddings of every unique prompted corpus text and class name.

CLIP_CONFIG = source(
    "models.clip_config",
    config["models"]["clip_config"],
    lambda path: fingerprint.file_identity(path, "open_clip model config", DIGESTS),
)
CLIP_WEIGHTS = source(
    "models.clip.pretrained",
    config["models"]["clip"]["pretrained"],
    lambda pretrained: fingerprint.clip_identity(
        config["models"]["clip"]["architecture"],
        pretrained,
        config["models"]["clip_config"],
        DIGESTS,
    ),
)


rule text_features:
    input:
        fg=f"{RESULTS}/corpus/fg.parquet",
        bg=f"{RESULTS}/corpus/bg.parquet",
        classes=f"{RESULTS}/classes.parquet",
        clip=CLIP_WEIGHTS.inputs,
        clip_config=CLIP_CONFIG.inputs,
    output:
        f"{RESULTS}/text/features.parquet",
    log:
        f"{LOGS}/text_features.log",
    benchmark:
        f"{BENCH}/text_features.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: 2
    resources:
        gpu=config["text"]["gpu"],
        mem_mb=MEM["text_features"],
        runtime=60,
    params:
        **stage(
            "qaclims.text_features",
            {
                "architecture": config["models"]["clip"]["architecture"],
                "prompt": config["text"]["prompt"],
            },
            sources={"pretrained": CLIP_WEIGHTS, "clip_config": CLIP_CONFIG},
            speed={
                "batch_size": config["text"]["batch_size"],
                "cache": f"{RESULTS}/text/.features-cache.parquet",
            },
            threads_flag="threads",
        ),
    shell:
        "python -m qaclims.gpu_binding {resources.gpu} -- python -m qaclims text_features"
        " --corpus-fg {input.fg} --corpus-bg {input.bg} --classes {input.classes}"
        " --out {output} {params.flags} > {log} 2>&1"
