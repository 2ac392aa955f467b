# Videos -> WebDataset shards. The corpus is split into at most `preprocess_jobs` jobs by a
# stable hash of each file's path; each job decodes its videos in parallel (threads).


rule preprocess:
    input:
        chunk_inputs,
    output:
        directory(f"{SHARDS}/part-{{chunk}}"),
    params:
        videos=VIDEO_DIR,
        actions=f"actions_dir={shlex.quote(ACTIONS_DIR)}" if ACTIONS_DIR else "",
        num_chunks=NUM_CHUNKS,
        chunk=lambda wc: int(wc.chunk),
        overrides=cli_overrides("preprocess"),
        config=config_digest("preprocess", "data.preprocess", "data.offsets"),
    wildcard_constraints:
        chunk=r"\d{3}",
    conda:
        "../../environment.yml"
    log:
        "logs/preprocess/part-{chunk}.log",
    benchmark:
        "benchmarks/preprocess/part-{chunk}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "python -m hlrp.data.preprocess input_dir={params.videos:q} output_dir={output:q} "
        "chunk={params.chunk} num_chunks={params.num_chunks} workers={threads} "
        "{params.actions} {params.overrides} > {log:q} 2>&1"


rule shard_index:
    input:
        expand(f"{SHARDS}/part-{{chunk}}", chunk=CHUNKS),
    output:
        SHARD_INDEX,
    conda:
        "../../environment.yml"
    log:
        "logs/preprocess/shard_index.log",
    benchmark:
        "benchmarks/preprocess/shard_index.tsv"
    shell:
        "python -m hlrp.data.index {output:q} {input:q} > {log:q} 2>&1"
