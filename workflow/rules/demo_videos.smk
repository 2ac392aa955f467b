# The embedded demo corpus: Meta-World expert episodes rendered to ordinary mp4 files.
# Only used when config `videos: demo`; the rest of the workflow treats them like any videos.


rule demo_videos:
    output:
        videos=expand(f"{DEMO_DIR}/videos/{{video}}", video=VIDEOS if USE_DEMO else []),
        table=f"{DEMO_DIR}/videos/metadata.csv",
        episodes=f"{DEMO_DIR}/ground_truth/episodes.csv",
    params:
        out=lambda wildcards, output: str(Path(output.table).parent.parent),
        overrides=cli_overrides("demo_videos"),
        config=config_digest("demo_videos", "demo"),
    conda:
        "../../environment.yml"
    log:
        "logs/demo_videos/demo_videos.log",
    benchmark:
        "benchmarks/demo_videos/demo_videos.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "MUJOCO_GL=${{MUJOCO_GL:-egl}} python -m hlrp.sim.demo_videos "
        "output_dir={params.out:q} workers={threads} {params.overrides} > {log:q} 2>&1"
