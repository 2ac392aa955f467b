# The LAQ quality report (a gate) and latent-action labelling of the shards for stage 2.


rule laq_report:
    input:
        ckpt=f"{RESULTS}/laq/laq.ckpt",
        shards=SHARD_INDEX,
    output:
        json=f"{RESULTS}/laq_report/report.json",
        html=f"{RESULTS}/laq_report/report.html",
    params:
        out=lambda wildcards, output: str(Path(output.json).parent),
        overrides=cli_overrides("laq_report"),
        config=config_digest(
            "laq_report", "laq.report", "laq.data.offsets", "laq.data.val_split"
        ),
    conda:
        "../../environment.yml"
    log:
        "logs/laq_report/laq_report.log",
    benchmark:
        "benchmarks/laq_report/laq_report.tsv"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    shell:
        "python -m hlrp.laq.report laq_ckpt={input.ckpt:q} data.shards={input.shards:q} "
        "output_dir={params.out:q} {params.overrides} > {log:q} 2>&1"


rule label_latents:
    input:
        ckpt=f"{RESULTS}/laq/laq.ckpt",
        shards=SHARD_INDEX,
        report=f"{RESULTS}/laq_report/report.json",
    output:
        f"{RESULTS}/labels/index.json",
    params:
        out=lambda wildcards, output: str(Path(output[0]).parent),
        overrides=cli_overrides("label_latents"),
        config=config_digest("label_latents", "laq.label", "laq.data.offsets"),
    conda:
        "../../environment.yml"
    log:
        "logs/label_latents/label_latents.log",
    benchmark:
        "benchmarks/label_latents/label_latents.tsv"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=12 * 60,
    shell:
        "python -m hlrp.laq.label laq_ckpt={input.ckpt:q} data.shards={input.shards:q} "
        "report={input.report:q} output_dir={params.out:q} workers={threads} "
        "{params.overrides} > {log:q} 2>&1"
