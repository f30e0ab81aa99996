# Corpus report: top FG/BG answers per class, optionally against a second corpus.

COMPARE_CORPUS = source(
    "corpus_report.compare_with",
    config["corpus_report"]["compare_with"],
    lambda folder: {
        name: fingerprint.file_identity(
            f"{folder}/{name}.parquet",
            f"corpus {name}.parquet to compare with",
            DIGESTS,
        )["file"]
        for name in ("fg", "bg")
    },
)


rule corpus_report:
    input:
        fg=f"{RESULTS}/corpus/fg.parquet",
        bg=f"{RESULTS}/corpus/bg.parquet",
        classes=f"{RESULTS}/classes.parquet",
    output:
        md=report(
            f"{RESULTS}/eval/corpus_report.md",
            caption="../report/corpus_report.rst",
            category="4. Answer corpus",
        ),
        json=f"{RESULTS}/eval/corpus_report.json",
    log:
        f"{LOGS}/corpus_report.log",
    benchmark:
        f"{BENCH}/corpus_report.tsv"
    conda:
        "../envs/qaclims.yaml"
    threads: 1
    resources:
        mem_mb=MEM["corpus_report"],
        runtime=30,
    params:
        **stage(
            "qaclims.corpus_report",
            {"top_k": config["corpus_report"]["top_k"]},
            sources={"compare_with": COMPARE_CORPUS},
        ),
    shell:
        "python -m qaclims corpus_report --corpus-fg {input.fg} --corpus-bg {input.bg}"
        " --classes {input.classes} --out-md {output.md} --out-json {output.json}"
        " {params.flags} > {log} 2>&1"
