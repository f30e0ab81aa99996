# CAMs: multi-scale + flip inference per shard, then their evaluation, for each CAM network:
# RITC (the main chain), the baseline it starts from, and the RITC ablations (target
# `ablation`). Paths differ by a suffix `tag`; RITC keeps the plain ones (cams/,
# eval/cam.json) that the CRF and IRN read.


# tag -> (the row name in the tables and the report, the network).
CAM_NETS = {
    "": ("RITC CAM", built_source(f"{RESULTS}/models/ritc.pt")),
    "_baseline": ("baseline CAM", BASELINE),
    "_ritc_no_bg": (
        "RITC CAM, no BG loss",
        built_source(f"{RESULTS}/models/ritc_no_bg.pt"),
    ),
    "_ritc_label_only": (
        "RITC CAM, class-name FG text",
        built_source(f"{RESULTS}/models/ritc_label_only.pt"),
    ),
}


rule cams:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
        model=lambda wildcards: CAM_NETS[wildcards.tag][1].inputs,
    output:
        f"{RESULTS}/cams{{tag}}/shard-{{shard}}.npz",
    log:
        f"{LOGS}/cams{{tag}}/shard-{{shard}}.log",
    benchmark:
        f"{BENCH}/cams{{tag}}/shard-{{shard}}.tsv"
    wildcard_constraints:
        tag=one_of(CAM_NETS),
    conda:
        "../envs/qaclims.yaml"
    threads: config["cam_infer"]["threads"]
    resources:
        gpu=config["cam_infer"]["gpu"],
        mem_mb=MEM["cams"],
        runtime=120,
    params:
        **by_wildcard(
            "tag", {tag: cams_stage(net) for tag, (_, net) in CAM_NETS.items()}
        ),
    shell:
        "python -m qaclims.gpu_binding {resources.gpu} --"
        " python -m qaclims cams --manifest {input.manifest} --classes {input.classes}"
        " --out {output} --shard {wildcards.shard} {params.flags} > {log} 2>&1"


rule eval_cam:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
        cams=expand(
            f"{RESULTS}/cams{{tag}}/shard-{{shard}}.npz",
            shard=SHARDS,
            allow_missing=True,
        ),
    output:
        json=f"{RESULTS}/eval/cam{{tag}}.json",
        csv=report(
            f"{RESULTS}/eval/cam{{tag}}_per_class.csv",
            caption="../report/cam_eval.rst",
            category="1. CAMs",
            subcategory=lambda wildcards: CAM_NETS[wildcards.tag][0],
        ),
        bars=report(
            f"{RESULTS}/eval/cam{{tag}}_iou.png",
            caption="../report/cam_iou.rst",
            category="1. CAMs",
            subcategory=lambda wildcards: CAM_NETS[wildcards.tag][0],
        ),
        sweep=report(
            f"{RESULTS}/eval/cam{{tag}}_sweep.png",
            caption="../report/cam_sweep.rst",
            category="1. CAMs",
            subcategory=lambda wildcards: CAM_NETS[wildcards.tag][0],
        ),
        vis=report(
            directory(f"{RESULTS}/eval/cam{{tag}}_vis"),
            patterns=["{name}.png"],
            caption="../report/cam_overlays.rst",
            category="1. CAMs",
            subcategory=lambda wildcards: f"{CAM_NETS[wildcards.tag][0]} overlays",
        ),
    log:
        f"{LOGS}/eval_cam{{tag}}.log",
    benchmark:
        f"{BENCH}/eval_cam{{tag}}.tsv"
    wildcard_constraints:
        tag=one_of(CAM_NETS),
    conda:
        "../envs/qaclims.yaml"
    threads: 1
    resources:
        mem_mb=MEM["eval_cam"],
        runtime=60,
    params:
        **stage(
            "qaclims.eval_cam",
            {"split": DATASET["eval_split"], **section("cam_eval")},
        ),
    shell:
        "python -m qaclims eval_cam --manifest {input.manifest} --classes {input.classes}"
        " --cams {input.cams} --out-json {output.json} --out-csv {output.csv}"
        " --out-bars {output.bars} --out-vis {output.vis} --out-sweep {output.sweep}"
        " {params.flags} > {log} 2>&1"


rule cam_compare:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        classes=f"{RESULTS}/classes.parquet",
        baseline=expand(f"{RESULTS}/cams_baseline/shard-{{shard}}.npz", shard=SHARDS),
        ritc=expand(f"{RESULTS}/cams/shard-{{shard}}.npz", shard=SHARDS),
    output:
        report(
            directory(f"{RESULTS}/eval/cam_compare"),
            patterns=["{name}.png"],
            caption="../report/cam_compare.rst",
            category="0. Summary",
            subcategory="baseline vs RITC CAMs",
        ),
    log:
        f"{LOGS}/cam_compare.log",
    benchmark:
        f"{BENCH}/cam_compare.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: 1
    resources:
        mem_mb=MEM["cam_compare"],
        runtime=30,
    params:
        **stage(
            "qaclims.cam_compare",
            {
                "split": DATASET["eval_split"],
                "vis_images": config["cam_eval"]["vis_images"],
            },
        ),
    shell:
        "python -m qaclims cam_compare --manifest {input.manifest}"
        " --classes {input.classes} --baseline {input.baseline} --ritc {input.ritc}"
        " --out {output} {params.flags} > {log} 2>&1"
