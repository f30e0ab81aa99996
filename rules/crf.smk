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
        mem_mb=lambda wildcards, threads: 1000 + 1500 * threads,
        runtime=120,
    params:
        split=DATASET["train_split"],
        fg=config["crf"]["fg_threshold"],
        bg=config["crf"]["bg_threshold"],
        gt_prob=config["crf"]["gt_prob"],
        iterations=config["crf"]["iterations"],
        g_sxy=config["crf"]["gaussian_sxy"],
        g_compat=config["crf"]["gaussian_compat"],
        b_sxy=config["crf"]["bilateral_sxy"],
        b_srgb=config["crf"]["bilateral_srgb"],
        b_compat=config["crf"]["bilateral_compat"],
        code=code_digest("qaclims.crf"),
    shell:
        "python -m qaclims crf --manifest {input.manifest} --cams {input.cams} --out {output}"
        " --split {params.split} --fg-threshold {params.fg} --bg-threshold {params.bg}"
        " --gt-prob {params.gt_prob} --iterations {params.iterations}"
        " --gaussian-sxy {params.g_sxy} --gaussian-compat {params.g_compat}"
        " --bilateral-sxy {params.b_sxy} --bilateral-srgb {params.b_srgb}"
        " --bilateral-compat {params.b_compat} --workers {threads} > {log} 2>&1"
