# Per-class IoU of the pseudo masks and of the segmentation for the report: an HTML table
# and a bar chart drawn from the evaluation JSON (whichever rule writes it), as eval_cam
# draws them for the CAMs.

# eval/<what>.json -> (the report's category, how the figure names what was scored).
CLASS_IOU = {
    "pseudo_masks": ("2. Pseudo masks", "pseudo masks"),
    "seg": ("3. Segmentation", "segmentation"),
}


rule class_iou:
    input:
        f"{RESULTS}/eval/{{what}}.json",
    output:
        html=report(
            f"{RESULTS}/eval/{{what}}_per_class.html",
            caption="../report/class_iou_table.rst",
            category=lambda wildcards: CLASS_IOU[wildcards.what][0],
            subcategory="per-class IoU",
        ),
        bars=report(
            f"{RESULTS}/eval/{{what}}_iou.png",
            caption="../report/class_iou.rst",
            category=lambda wildcards: CLASS_IOU[wildcards.what][0],
            subcategory="per-class IoU",
        ),
    log:
        f"{LOGS}/class_iou/{{what}}.log",
    benchmark:
        f"{BENCH}/class_iou/{{what}}.tsv"
    wildcard_constraints:
        what=one_of(CLASS_IOU),
    conda:
        "../envs/qaclims.yaml"
    threads: 1
    resources:
        mem_mb=MEM["class_iou"],
        runtime=5,
    params:
        **by_wildcard(
            "what",
            {
                what: stage("qaclims.class_iou", {"title": title})
                for what, (_, title) in CLASS_IOU.items()
            },
        ),
    shell:
        "python -m qaclims class_iou --report {input} --out-html {output.html}"
        " --out-bars {output.bars} {params.flags} > {log} 2>&1"
