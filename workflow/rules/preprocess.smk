# Videos -> WebDataset shards. The corpus is split into at most `preprocess_jobs` jobs by a
# stable hash of each file's path; each job decodes its videos in parallel (threads).
# A job never lists the folder: its videos (names relative to the folder, from
# common.smk's listing) are written by printf, one per line, to <part>/inputs.txt, which the
# CLI reads as input_list. Snakemake quotes each name ({params.files:q}), so any character but
# a newline is safe, and a long list goes through Snakemake's script file, not argv.


rule preprocess:
    input:
        chunk_inputs,
    output:
        directory(f"{SHARDS}/part-{{chunk}}"),
    params:
        videos=VIDEO_DIR,
        files=chunk_videos,
        actions=f"actions_dir={shlex.quote(ACTIONS_DIR)}" if ACTIONS_DIR else "",
        overrides=cli_overrides("preprocess"),
        config=config_digest("preprocess", "data.preprocess"),
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
        "mkdir -p {output:q} && printf '%s\\n' {params.files:q} > {output:q}/inputs.txt.tmp && "
        "mv {output:q}/inputs.txt.tmp {output:q}/inputs.txt && "
        "python -m hlrp.data.preprocess input_dir={params.videos:q} "
        "input_list={output:q}/inputs.txt output_dir={output:q} workers={threads} "
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
