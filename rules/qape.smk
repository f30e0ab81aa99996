# QAPE: demo models (demo configs only), VQA answers per shard, the merged answer corpus.


if IS_DEMO:

    rule demo_models:
        output:
            vqa=directory(config["models"]["vqa"]),
            clip=config["models"]["clip"]["pretrained"],
            clip_config=config["models"]["clip_config"],
        log:
            f"{LOGS}/demo_models.log",
        benchmark:
            f"{BENCH}/demo_models.tsv"
        conda:
            "../envs/qaclims.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        params:
            texts=config["qape"]["fg_questions"] + config["qape"]["bg_questions"],
            seed=config["demo"]["seed"],
            size=config["qape"]["image_size"],
            code=code_digest("qaclims.demo_models"),
        shell:
            "python -m qaclims demo_models --vqa-out {output.vqa} --clip-weights {output.clip}"
            " --clip-config {output.clip_config} --texts {params.texts:q} --seed {params.seed}"
            " --vqa-image-size {params.size} > {log} 2>&1"


rule qape:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
        vqa=config["models"]["vqa"] if IS_DEMO else [],
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
        mem_mb=16000,
        runtime=240,
    params:
        split=DATASET["train_split"],
        model=lambda wildcards, input: input.vqa or config["models"]["vqa"],
        fg=config["qape"]["fg_questions"],
        bg=config["qape"]["bg_questions"],
        size=config["qape"]["image_size"],
        beams=config["qape"]["num_beams"],
        max_length=config["qape"]["max_length"],
        min_length=config["qape"]["min_length"],
        enc="--enc-token" if config["qape"]["enc_token"] else "--no-enc-token",
        max_tokens=config["qape"]["max_question_tokens"],
        lemmatizer=config["qape"]["lemmatizer"],
        wordnet=(
            f"--wordnet-dir {config['qape']['wordnet_dir']}"
            if config["qape"]["wordnet_dir"]
            else ""
        ),
        batch=config["qape"]["batch_images"],
        chunk=config["qape"]["chunk_images"],
        workers=config["qape"]["workers"],
        partial=f"{RESULTS}/qape/.partial/shard-{{shard}}",
        code=code_digest("qaclims.qape"),
    shell:
        "python -m qaclims.gpu_binding {resources.gpu} -- python -m qaclims qape"
        " --manifest {input.manifest} --classes {input.classes}"
        " --fg-out {output.fg} --bg-out {output.bg} --shard {wildcards.shard}"
        " --split {params.split} --model {params.model:q} --fg-questions {params.fg:q}"
        " --bg-questions {params.bg:q} --image-size {params.size} --num-beams {params.beams}"
        " --max-length {params.max_length} --min-length {params.min_length} {params.enc}"
        " --max-question-tokens {params.max_tokens} --lemmatizer {params.lemmatizer}"
        " {params.wordnet} --batch-images {params.batch} --chunk-images {params.chunk}"
        " --workers {params.workers} --threads {threads} --partial-dir {params.partial}"
        " > {log} 2>&1"


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
        mem_mb=4000,
        runtime=30,
    params:
        synonyms=[
            f"{name}={'|'.join(names)}"
            for name, names in config["qape"]["synonyms"].items()
        ],
        code=code_digest("qaclims.corpus"),
    shell:
        "python -m qaclims corpus --fg-shards {input.fg} --bg-shards {input.bg}"
        " --fg-out {output.fg} --bg-out {output.bg} --synonyms {params.synonyms:q}"
        " > {log} 2>&1"
