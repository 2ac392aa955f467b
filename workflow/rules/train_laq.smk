# Stage 1: train the latent action quantizer on the shards. Re-running the rule resumes from
# the run's last checkpoint (results/laq/checkpoints/last.ckpt) unless the config changed.


rule train_laq:
    input:
        SHARD_INDEX,
    output:
        ckpt=f"{RESULTS}/laq/laq.ckpt",
        config=f"{RESULTS}/laq/config.yaml",
    params:
        out=lambda wildcards, output: str(Path(output.ckpt).parent),
        overrides=cli_overrides("train_laq"),
        config=config_digest("train_laq", "model", "data", "training", "seed"),
    conda:
        "../../environment.yml"
    log:
        "logs/train_laq/train_laq.log",
    benchmark:
        "benchmarks/train_laq/train_laq.tsv"
    threads: 4
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=24 * 60,
    shell:
        "python -m hlrp.laq.train data.shards={input:q} output_dir={params.out:q} "
        "data.num_workers={threads} {params.overrides} > {log:q} 2>&1"
