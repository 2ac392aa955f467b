# Stage 3: action-labelled episodes -> finetuned policies (one per variant and number of
# labelled episodes) -> closed-loop evaluation in Meta-World -> the final report.
#
#   results/episodes/{n}/index.json                  n labelled episodes per task ("all": every one)
#   results/low_level/oracle_pretrain/policy/        the oracle's pretraining on true actions
#   results/low_level/{variant}/n{n}/policy/         finetuned: latent | scratch | oracle
#   results/evaluation/{variant}/n{n}/results.json   success per task, 95 % intervals, videos
#   results/report/index.html                        everything side by side
#
# `snakemake --forcerun finetune` refits every variant; a single target such as
# results/evaluation/scratch/n2/results.json builds only what that one needs. Every variant
# trains on the same episodes for the same steps; `scratch` starts from the backbone that
# stage 2 starts from (foundation.model.backbone of the foundation experiment), never from
# stage 2's output.

wildcard_constraints:
    variant="latent|scratch|oracle",
    n=r"all|\d+",


rule episodes:
    input:
        episodes_inputs,
    output:
        index=f"{RESULTS}/episodes/{{n}}/index.json",
    params:
        out=lambda wildcards, output: str(Path(output.index).parent),
        n=lambda wildcards: 0 if wildcards.n == "all" else int(wildcards.n),
        demo=demo_overrides(),
        source=(
            f"data.source=demo input_dir={shlex.quote(DEMO_DIR)}"
            if FT_SOURCE == "demo"
            else f"data.source={shlex.quote(FT_SOURCE)}"
        ),
        overrides=cli_overrides("episodes"),
        config=config_digest("episodes", "low_level.data")
        + config_digest("train_laq", "laq.data.val_split")
        + config_digest("demo_videos", "demo"),
    conda:
        "../../environment.yml"
    log:
        "logs/episodes/{n}.log",
    benchmark:
        "benchmarks/episodes/{n}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m hlrp.low_level.episodes {params.overrides} {params.source} {params.demo} "
        "data.episodes_per_task={params.n} output_dir={params.out:q} > {log:q} 2>&1"


rule pretrain_oracle:
    input:
        episodes=f"{RESULTS}/episodes/all/index.json",
    output:
        policy=f"{RESULTS}/low_level/oracle_pretrain/policy/hlrp_policy.json",
        metrics=f"{RESULTS}/low_level/oracle_pretrain/metrics.json",
    params:
        out=lambda wildcards, output: str(Path(output.metrics).parent),
        launch=launch_prefix(FT_TASKS),
        nodes=FT_NODES,
        gpus=FT_GPUS,
        overrides=cli_overrides("pretrain_oracle"),
        # as many steps as stage 2 pretrains for: the same budget, true actions for codes
        extra=f"training.max_steps={stage_cfg('train_foundation').foundation.training.max_steps}",
        config=config_digest("pretrain_oracle", *LOW_LEVEL_RESULT_KEYS)
        + config_digest(
            "train_foundation",
            "foundation.model.backbone",
            "foundation.model.image_size",
            "foundation.training.max_steps",
        ),
    conda:
        "../../environment.yml"
    log:
        "logs/pretrain_oracle/pretrain_oracle.log",
    benchmark:
        "benchmarks/pretrain_oracle/pretrain_oracle.tsv"
    threads: 4
    resources:
        **FT_RESOURCES,
    shell:
        finetune_shell("scratch")


rule finetune:
    input:
        unpack(finetune_init),
        episodes=f"{RESULTS}/episodes/{{n}}/index.json",
    output:
        policy=f"{RESULTS}/low_level/{{variant}}/n{{n}}/policy/hlrp_policy.json",
        metrics=f"{RESULTS}/low_level/{{variant}}/n{{n}}/metrics.json",
    params:
        out=lambda wildcards, output: str(Path(output.metrics).parent),
        init=lambda wildcards, input: (
            shlex.quote(str(Path(input.init).parent)) if "init" in input.keys() else "scratch"
        ),
        launch=launch_prefix(FT_TASKS),
        nodes=FT_NODES,
        gpus=FT_GPUS,
        overrides=cli_overrides("finetune"),
        extra="",
        config=config_digest("finetune", *LOW_LEVEL_RESULT_KEYS)
        + config_digest("train_foundation", "foundation.model.backbone", "foundation.model.image_size"),
    conda:
        "../../environment.yml"
    log:
        "logs/finetune/{variant}_n{n}.log",
    benchmark:
        "benchmarks/finetune/{variant}_n{n}.tsv"
    threads: 4
    resources:
        **FT_RESOURCES,
    shell:
        finetune_shell("{params.init}")


rule evaluate:
    input:
        policy=f"{RESULTS}/low_level/{{variant}}/n{{n}}/policy/hlrp_policy.json",
    output:
        results=f"{RESULTS}/evaluation/{{variant}}/n{{n}}/results.json",
    params:
        policy=lambda wildcards, input: str(Path(input.policy).parent),
        out=lambda wildcards, output: str(Path(output.results).parent),
        overrides=cli_overrides("evaluate"),
        device="cuda" if EV["gpu"] else "cpu",
        demo=demo_overrides(),
        config=config_digest("evaluate", "low_level.evaluation")
        + config_digest("demo_videos", "demo"),
    conda:
        "../../environment.yml"
    log:
        "logs/evaluate/{variant}_n{n}.log",
    benchmark:
        "benchmarks/evaluate/{variant}_n{n}.tsv"
    threads: 2
    resources:
        gpu=1 if EV["gpu"] else 0,  # lrz: the partition is $HLRP_EVAL_PARTITION (env.sh)
        mem_mb=16000,
        runtime=240,
    shell:
        "MUJOCO_GL=${{MUJOCO_GL:-egl}} python -m hlrp.low_level.evaluate {params.overrides} "
        "{params.demo} policy_dir={params.policy:q} output_dir={params.out:q} "
        "evaluation.device={params.device} > {log:q} 2>&1"


rule final_report:
    input:
        evaluations=EVALUATIONS,
        finetunes=POLICIES,
        laq_report=f"{RESULTS}/laq_report/report.json",
        foundation_report=f"{RESULTS}/foundation_report/report.json",
    output:
        html=f"{RESULTS}/report/index.html",
        json=f"{RESULTS}/report/summary.json",
    params:
        out=lambda wildcards, output: str(Path(output.html).parent),
        results=lambda wildcards, output: str(Path(output.html).parent.parent),
        overrides=cli_overrides("final_report"),
    conda:
        "../../environment.yml"
    log:
        "logs/final_report/final_report.log",
    benchmark:
        "benchmarks/final_report/final_report.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m hlrp.low_level.report {params.overrides} input_dir={params.results:q} "
        "output_dir={params.out:q} > {log:q} 2>&1"
