# Stage 2: the foundation VLA learns to predict the latent codes of the labelled shards from
# frame t and the instruction (Lightning Fabric), then its report on held-out videos.
#
# A killed or timed-out run resumes from results/foundation/checkpoints/last.ckpt when the
# rule runs again; a forced rebuild (--forcerun train_foundation) of a finished run trains
# anew and moves the old run to results/foundation/previous/run-NNN/.
#
# `train_foundation: {nodes: N, gpus_per_node: G}` in the workflow config asks Slurm for N
# nodes with G GPUs and G tasks each, launches N*G processes with `srun` (the lrz profile's
# `launcher`) and gives Fabric the same N and G (cluster.num_nodes, cluster.devices); the
# experiment picks the strategy (vla_7b: FSDP).


rule train_foundation:
    input:
        labels=f"{RESULTS}/labels/index.json",
        laq=f"{RESULTS}/laq/laq.ckpt",
    output:
        model=f"{RESULTS}/foundation/model/hlrp_foundation.json",
        metrics=f"{RESULTS}/foundation/metrics.json",
    params:
        out=lambda wildcards, output: str(Path(output.metrics).parent),
        launch=launch_prefix(VLA_TASKS),
        nodes=VLA_NODES,
        gpus=VLA_GPUS,
        overrides=cli_overrides("train_foundation"),
        config=config_digest("train_foundation", *FOUNDATION_RESULT_KEYS),
    conda:
        "../../environment.yml"
    log:
        "logs/train_foundation/train_foundation.log",
    benchmark:
        "benchmarks/train_foundation/train_foundation.tsv"
    threads: 4
    resources:
        nodes=VLA_NODES,
        gres=f"gpu:{VLA_GPUS}",
        tasks_per_node=VLA_GPUS if VLA_GPUS > 1 else 0,
        tasks=VLA_TASKS if VLA_GPUS == 1 else 0,
        tasks_per_gpu=1 if VLA_GPUS == 1 else 0,
        mpi=config["launcher"] if VLA_TASKS > 1 else "",
        mem_mb=64000,
        runtime=48 * 60,
    shell:
        "{params.launch} python -m hlrp.foundation.train data.labels={input.labels:q} "
        "laq_ckpt={input.laq:q} output_dir={params.out:q} data.num_workers={threads} "
        "{params.overrides} cluster.num_nodes={params.nodes} cluster.devices={params.gpus} "
        "> {log:q} 2>&1"


rule foundation_report:
    input:
        model=f"{RESULTS}/foundation/model/hlrp_foundation.json",
        labels=f"{RESULTS}/labels/index.json",
    output:
        json=f"{RESULTS}/foundation_report/report.json",
        html=f"{RESULTS}/foundation_report/report.html",
    params:
        model=lambda wildcards, input: str(Path(input.model).parent),
        out=lambda wildcards, output: str(Path(output.json).parent),
        overrides=cli_overrides("foundation_report"),
        config=config_digest(
            "foundation_report", "foundation.report", "foundation.data.val_split"
        ),
    conda:
        "../../environment.yml"
    log:
        "logs/foundation_report/foundation_report.log",
    benchmark:
        "benchmarks/foundation_report/foundation_report.tsv"
    threads: 2
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=120,
    shell:
        "python -m hlrp.foundation.report model_dir={params.model:q} "
        "data.labels={input.labels:q} output_dir={params.out:q} {params.overrides} "
        "> {log:q} 2>&1"
