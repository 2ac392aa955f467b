"""The preprocess rule: each job gets its own list of videos and never lists the folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from hlrp.data import preprocess as P
from videos import moving_square, write_video

NUM_JOBS = 3
#: File names a shell or a Hydra override would trip over (newlines are out of scope).
ODD_NAMES = [
    "a b.mp4",
    "it's $HOME, a=b.mp4",
    'q"uote.mp4',
    "東京 (1).mp4",
    "-dash.mp4",
    "100%.mp4",
    "back\\slash.mp4",
    "sub/x.mp4",
]
#: Only the preprocessing part of the workflow, so other stages' rules do not matter here.
SNAKEFILE = """configfile: "config/workflow.yaml"


include: "rules/common.smk"
include: "rules/preprocess.smk"
"""


@pytest.fixture
def project(tmp_path):
    """A copy of the workflow and configs, and a corpus of odd names and symlinks."""
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    shutil.copytree(REPO / "config", tmp_path / "config")
    shutil.copy(REPO / "environment.yml", tmp_path / "environment.yml")
    (tmp_path / "workflow" / "preprocess_only.smk").write_text(SNAKEFILE)
    videos = tmp_path / "my videos"
    (videos / "sub").mkdir(parents=True)
    for name in ODD_NAMES:
        (videos / name).write_bytes(b"not decoded in a dry run")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "far.mp4").write_bytes(b"outside the folder")
    (videos / "link out.mp4").symlink_to(tmp_path / "elsewhere" / "far.mp4")
    (videos / "sub" / "inside.mp4").symlink_to(Path("..") / "a b.mp4")
    (videos / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    names = [*ODD_NAMES, "link out.mp4", "sub/inside.mp4", "dangling.mp4"]
    return tmp_path, videos, sorted(names)


def smk(project, *args):
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", "workflow/preprocess_only.smk", *args],
        cwd=project,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "HLRP_CONFIG_DIR": str(project / "config"),
        },
        timeout=900,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def test_dry_run_gives_each_job_its_own_list(project):
    root, videos, names = project
    config = ["--config", f"videos={videos}", f"preprocess_jobs={NUM_JOBS}"]
    out = smk(root, "-n", "-p", *config, "--", "results/shards/index.json")
    commands = [
        line.removeprefix("Shell command: ")
        for line in out.splitlines()
        if line.startswith("Shell command: ") and "hlrp.data.preprocess" in line
    ]
    expected = {}
    for name in names:
        expected.setdefault(P.chunk_of(name, NUM_JOBS), []).append(name)
    assert len(commands) == len(expected)
    seen = []
    for cmd in commands:
        write_list, _, cli = cmd.partition(" && python -m hlrp.data.preprocess ")
        assert "input_list=" in cli and "chunk=" not in cli  # the job never walks the folder
        # run the rule's own list-writing part of the command, then read it like the CLI does
        subprocess.run(["bash", "-c", f"set -euo pipefail; {write_list}"], cwd=root, check=True)
        part = cli.split("output_dir=")[1].split()[0]
        listed = P.read_input_list(root / part / "inputs.txt")
        chunk = int(part.rsplit("-", 1)[1])
        assert f"input_list={part}/inputs.txt" in cli
        assert listed == sorted(expected[chunk])  # every odd name survives the shell
        assert not list((root / part).glob("*.tmp"))
        seen += listed
    assert sorted(seen) == names  # the dangling link too: the job records it as skipped


@pytest.mark.slow
def test_real_run_of_the_listed_jobs(tmp_path):
    """A real run: odd names and links are processed, the dangling link is skipped."""
    for name in ("my videos", "elsewhere"):
        (tmp_path / name).mkdir()
    shutil.copytree(REPO / "workflow", tmp_path / "workflow", dirs_exist_ok=True)
    shutil.copytree(REPO / "config", tmp_path / "config")
    shutil.copy(REPO / "environment.yml", tmp_path / "environment.yml")
    (tmp_path / "workflow" / "preprocess_only.smk").write_text(SNAKEFILE)
    videos = tmp_path / "my videos"
    for i, name in enumerate(["a b.mp4", "it's $HOME, a=b.mp4"]):
        write_video(videos / name, moving_square(30, 96, 64, seed=i), fps=20)
    write_video(tmp_path / "elsewhere" / "far.mp4", moving_square(30, 96, 64, seed=5), fps=20)
    (videos / "link out.mp4").symlink_to(tmp_path / "elsewhere" / "far.mp4")
    (videos / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    config = ["--config", f"videos={videos}", "preprocess_jobs=2"]
    smk(tmp_path, "--cores", "2", *config, "--", "results/shards/index.json")
    index = json.loads((tmp_path / "results/shards/index.json").read_text())
    assert index["totals"]["videos"] == 4
    assert index["totals"]["videos_by_status"] == {"ok": 3, "skipped": 1}
    records = []
    for part in sorted((tmp_path / "results/shards").glob("part-*")):
        records += json.loads((part / "manifest.json").read_text())["videos"]
    by_file = {r["file"]: r for r in records}
    assert by_file["dangling.mp4"]["reason"].startswith("dangling symlink")
    assert by_file["link out.mp4"]["status"] == "ok"
