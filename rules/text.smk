# Text features: CLIP embeddings of every unique prompted corpus text and class name.


rule text_features:
    input:
        fg=f"{RESULTS}/corpus/fg.parquet",
        bg=f"{RESULTS}/corpus/bg.parquet",
        classes=f"{RESULTS}/classes.parquet",
        clip=config["models"]["clip"]["pretrained"] if IS_DEMO else [],
        clip_config=config["models"]["clip_config"] if IS_DEMO else [],
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
        mem_mb=8000,
        runtime=60,
    params:
        architecture=config["models"]["clip"]["architecture"],
        pretrained=lambda wildcards, input: (
            input.clip or config["models"]["clip"]["pretrained"]
        ),
        clip_config=(
            f"--clip-config {config['models']['clip_config']}"
            if config["models"]["clip_config"]
            else ""
        ),
        prompt=config["text"]["prompt"],
        batch=config["text"]["batch_size"],
        cache=f"{RESULTS}/text/.features-cache.parquet",
        code=code_digest("qaclims.text_features"),
    shell:
        "python -m qaclims.gpu_binding {resources.gpu} -- python -m qaclims text_features"
        " --corpus-fg {input.fg} --corpus-bg {input.bg}"
        " --classes {input.classes} --out {output} --architecture {params.architecture:q}"
        " --pretrained {params.pretrained:q} {params.clip_config} --prompt {params.prompt:q}"
        " --batch-size {params.batch} --cache {params.cache} --threads {threads}"
        " > {log} 2>&1"
