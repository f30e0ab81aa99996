# QAPE: demo models (demo configs only), VQA answers per shard, the merged answer corpus.

DEMO_MODELS = {
    "vqa": f"{RESULTS}/demo_models/blip-vqa-tiny",
    "clip": f"{RESULTS}/demo_models/clip-tiny.safetensors",
    "clip_config": f"{RESULTS}/demo_models/clip-tiny.json",
}


if IS_DEMO:

    rule demo_models:
        output:
            vqa=directory(DEMO_MODELS["vqa"]),
            clip=DEMO_MODELS["clip"],
            clip_config=DEMO_MODELS["clip_config"],
            quality=f"{RESULTS}/demo_models/quality.json",
        log:
            f"{LOGS}/demo_models.log",
        benchmark:
            f"{BENCH}/demo_models.tsv"
        conda:
            "../envs/qaclims.yaml"
        threads: config["demo_vlms"]["threads"]
        resources:
            mem_mb=MEM["demo_models"],
            runtime=15,
        params:
            **stage(
                "qaclims.demo_models",
                {
                    "texts": config["qape"]["fg_questions"]
                    + config["qape"]["bg_questions"],
                    "seed": config["demo"]["seed"],
                    "vqa_image_size": config["qape"]["image_size"],
                    "world": config["demo"]["world"],
                    "trained": config["demo_vlms"]["trained"],
                    **(demo_vlm_values() if config["demo_vlms"]["trained"] else {}),
                },
                threads_flag="threads",
            ),
        shell:
            "python -m qaclims demo_models --vqa-out {output.vqa}"
            " --clip-weights {output.clip} --clip-config {output.clip_config}"
            " --quality {output.quality} {params.flags} > {log} 2>&1"


VQA_MODEL = source(
    "models.vqa",
    config["models"]["vqa"],
    lambda name: fingerprint.vqa_identity(name, DIGESTS),
)


rule qape:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
        vqa=VQA_MODEL.inputs,
    output:
        fg=f"{RESULTS}/qape/fg/shard-{{shard}}.parquet",
        bg=f"{RESULTS}/qape/bg/shard-{{shard}}.parquet",
    log:
        f"{LOGS}/qape/shard-{{shard}}.log",
    benchmark:
        f"{BENCH}/qape/shard-{{shard}}.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: config["qape"]["workers"] + 1
    resources:
        gpu=config["qape"]["gpu"],
        mem_mb=MEM["qape"],
        runtime=240,
    params:
        **stage(
            "qaclims.qape",
            {
                "split": DATASET["train_split"],
                "shards": DATASET["shards"],
                **{
                    k: config["qape"][k]
                    for k in (
                        "fg_questions",
                        "bg_questions",
                        "image_size",
                        "num_beams",
                        "max_length",
                        "min_length",
                        "enc_token",
                        "max_question_tokens",
                        "precision",
                        "backend",
                        "prompt",
                        "max_new_tokens",
                        "answer_words",
                        "lemmatizer",
                        "wordnet_dir",
                    )
                },
            },
            sources={"model": VQA_MODEL},
            speed={
                "batch_images": config["qape"]["batch_images"],
                "chunk_images": config["qape"]["chunk_images"],
                "workers": config["qape"]["workers"],
                "store": f"{RESULTS}/qape/store",
            },
            threads_flag="threads",
        ),
    shell:
        "python -m qaclims.gpu_binding {resources.gpu} -- python -m qaclims qape"
        " --manifest {input.manifest} --classes {input.classes}"
        " --fg-out {output.fg} --bg-out {output.bg} --shard {wildcards.shard}"
        " {params.flags} > {log} 2>&1"


rule corpus:
    input:
        fg=expand(f"{RESULTS}/qape/fg/shard-{{shard}}.parquet", shard=SHARDS),
        bg=expand(f"{RESULTS}/qape/bg/shard-{{shard}}.parquet", shard=SHARDS),
    output:
        fg=f"{RESULTS}/corpus/fg.parquet",
        bg=f"{RESULTS}/corpus/bg.parquet",
    log:
        f"{LOGS}/corpus.log",
    benchmark:
        f"{BENCH}/corpus.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: 1
    resources:
        mem_mb=MEM["corpus"],
        runtime=30,
    params:
        **stage(
            "qaclims.corpus",
            {
                "synonyms": [
                    f"{name}={'|'.join(names)}"
                    for name, names in config["qape"]["synonyms"].items()
                ]
            },
        ),
    shell:
        "python -m qaclims corpus --fg-shards {input.fg} --bg-shards {input.bg}"
        " --fg-out {output.fg} --bg-out {output.bg} {params.flags} > {log} 2>&1"
