# Training curves: each training stage's per-step loss table (train_logs/<name>.parquet,
# written by the training rule itself) drawn as one PNG for the report. The default target
# draws the stages it trains (`trained_stages()`); the RITC ablations' curves are targets
# of their own (eval/training_curves/ritc_no_bg.png, ...).

# history table name -> how the report names the training stage.
TRAINING_CURVES = {
    "cam_baseline": "baseline CAM (train_cam)",
    **{
        f"ritc{v}": f"RITC ({v[1:].replace('_', ' ')})" if v else "RITC"
        for v in RITC_VARIANTS
    },
    "irn": "IRN (train_irn)",
    "seg": "segmentation (train_seg)",
}


rule training_curves:
    input:
        f"{RESULTS}/train_logs/{{name}}.parquet",
    output:
        report(
            f"{RESULTS}/eval/training_curves/{{name}}.png",
            caption="../report/training_curves.rst",
            category="5. Training",
            subcategory=lambda wildcards: TRAINING_CURVES[wildcards.name],
        ),
    log:
        f"{LOGS}/training_curves/{{name}}.log",
    benchmark:
        f"{BENCH}/training_curves/{{name}}.tsv"
    wildcard_constraints:
        name=one_of(TRAINING_CURVES),
    conda:
        "../envs/qaclims.yaml"
    threads: 1
    resources:
        mem_mb=MEM["training_curves"],
        runtime=5,
    params:
        **by_wildcard(
            "name",
            {
                name: stage("qaclims.training_curves", {"title": title})
                for name, title in TRAINING_CURVES.items()
            },
        ),
    shell:
        "python -m qaclims training_curves --history {input} --out {output}"
        " {params.flags} > {log} 2>&1"
