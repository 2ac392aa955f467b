# Stage 1: train the latent action quantizer on the shards. A killed or timed-out run is
# resumed from its last checkpoint (results/laq/checkpoints/last.ckpt) when the rule runs
# again; a forced rebuild (--forcerun train_laq) of a finished run trains anew and moves the
# old run to results/laq/previous/run-NNN/.
#
# One GPU by default; `train_laq: {nodes: N, gpus_per_node: G}` in the workflow config asks
# Slurm for N nodes with G GPUs and G tasks each, launches N*G processes with `srun` (the
# `launcher` the lrz profile sets) and passes the same N and G to Lightning.


rule train_laq:
    input:
        SHARD_INDEX,
    output:
        ckpt=f"{RESULTS}/laq/laq.ckpt",
        config=f"{RESULTS}/laq/config.yaml",
    params:
        out=lambda wildcards, output: str(Path(output.ckpt).parent),
        launch=launch_prefix(LAQ_TASKS),
        nodes=LAQ_NODES,
        gpus=LAQ_GPUS,
        overrides=cli_overrides("train_laq"),
        config=config_digest("train_laq", *TRAIN_RESULT_KEYS),
    conda:
        "../../environment.yml"
    log:
        "logs/train_laq/train_laq.log",
    benchmark:
        "benchmarks/train_laq/train_laq.tsv"
    threads: 4
    resources:
        nodes=LAQ_NODES,
        gres=f"gpu:{LAQ_GPUS}",
        # the Slurm plugin takes one of tasks_per_node (> 1) or tasks for an srun job
        tasks_per_node=LAQ_GPUS if LAQ_GPUS > 1 else 0,
        tasks=LAQ_TASKS if LAQ_GPUS == 1 else 0,
        # --ntasks-per-gpu excludes --ntasks-per-node: only for the one-task-per-GPU tasks= form
        tasks_per_gpu=1 if LAQ_GPUS == 1 else 0,
        mpi=config["launcher"] if LAQ_TASKS > 1 else "",
        mem_mb=32000,
        runtime=24 * 60,
    shell:
        "{params.launch} python -m hlrp.laq.train data.shards={input:q} "
        "output_dir={params.out:q} data.num_workers={threads} {params.overrides} "
        "cluster.num_nodes={params.nodes} cluster.devices={params.gpus} > {log:q} 2>&1"
