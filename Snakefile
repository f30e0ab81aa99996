# QA-CLIMS as a workflow: config, validation, one include per stage, the final targets.


configfile: f"{workflow.basedir}/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    shard=r"\d+",


include: "rules/data.smk"
include: "rules/qape.smk"
include: "rules/text.smk"
include: "rules/corpus_report.smk"
include: "rules/ritc.smk"
include: "rules/cam.smk"
include: "rules/crf.smk"
include: "rules/irn.smk"
include: "rules/seg.smk"
include: "rules/training_curves.smk"
include: "rules/class_iou.smk"


rule all:
    default_target: True
    input:
        final_targets(),
