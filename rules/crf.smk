# IR labels: confident foreground / background / ignore from the CAMs by a dense CRF, per shard.


rule crf:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        cams=f"{RESULTS}/cams/shard-{{shard}}.npz",
    output:
        directory(f"{RESULTS}/ir_labels/shard-{{shard}}"),
    log:
        f"{LOGS}/crf/shard-{{shard}}.log",
    benchmark:
        f"{BENCH}/crf/shard-{{shard}}.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: config["crf"]["threads"]
    resources:
        mem_mb=lambda wildcards, threads: MEM["crf"] + MEM["crf_per_thread"] * threads,
        runtime=120,
    params:
        **stage(
            "qaclims.crf",
            {"split": DATASET["train_split"], **section("crf")},
            threads_flag="workers",
        ),
    shell:
        "python -m qaclims crf --manifest {input.manifest} --cams {input.cams} --out {output}"
        " {params.flags} > {log} 2>&1"
