"""The embedded demo corpus (hlrp.sim.demo_videos): files, videos, ground truth, determinism."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("metaworld")
av = pytest.importorskip("av")

from hlrp.common.config import ConfigError, DemoConfig  # noqa: E402
from hlrp.sim import demo_videos  # noqa: E402
from hlrp.sim.demo_videos import episode_ids, generate, main  # noqa: E402
from hlrp.sim.instructions import INSTRUCTIONS, instruction_for  # noqa: E402

pytestmark = pytest.mark.sim

TASKS = ["drawer-open-v3", "button-press-topdown-v3"]
RESOLUTION = 64
SPF = 2  # DemoConfig's default steps_per_frame
FPS = 1.0 / (0.0125 * SPF)  # Meta-World's env.dt is 12.5 ms


def small_config(**changes) -> DemoConfig:
    values = {"tasks": list(TASKS), "episodes_per_task": 1, "resolution": RESOLUTION, "seed": 0}
    values.update(changes)
    return DemoConfig(**values)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("corpus")
    return out, generate(small_config(), out, workers=2)


@pytest.fixture(scope="module")
def cli_corpus(tmp_path_factory) -> Path:
    """The same config as ``corpus``, rendered again through the command line."""
    out = tmp_path_factory.mktemp("cli_corpus")
    argv = [
        f"output_dir={out}",
        f"demo.tasks=[{','.join(TASKS)}]",
        "demo.episodes_per_task=1",
        f"demo.resolution={RESOLUTION}",
        "demo.seed=0",
        # the rest as DemoConfig's defaults (the demo experiment sets its own corpus)
        f"demo.steps_per_frame={DemoConfig().steps_per_frame}",
        f"demo.action_noise={DemoConfig().action_noise}",
        f"demo.max_steps={DemoConfig().max_steps}",
        "workers=2",
    ]
    assert main(argv) == 0
    return out


def test_episode_ids_naming(corpus):
    assert episode_ids(["a-v3", "b-v3"], 2) == [
        "a-v3_ep000",
        "a-v3_ep001",
        "b-v3_ep000",
        "b-v3_ep001",
    ]
    out, records = corpus
    ids = episode_ids(TASKS, 1)
    assert [r["episode_id"] for r in records] == ids
    assert sorted(p.stem for p in (out / "videos").glob("*.mp4")) == sorted(ids)
    assert sorted(p.stem for p in (out / "ground_truth").glob("*.npz")) == sorted(ids)


def test_files_and_columns(corpus):
    out, _ = corpus
    columns, rows = read_csv(out / "videos" / "metadata.csv")
    assert columns == ["file", "episode_id", "task", "instruction", "fps", "num_frames"]
    assert [r["episode_id"] for r in rows] == episode_ids(TASKS, 1)
    for row in rows:
        assert row["file"] == f"{row['episode_id']}.mp4"
        assert (out / "videos" / row["file"]).is_file()
        assert (out / "ground_truth" / f"{row['episode_id']}.npz").is_file()
        assert row["instruction"] == instruction_for(row["task"])
        assert float(row["fps"]) == pytest.approx(FPS)
    columns, rows = read_csv(out / "ground_truth" / "episodes.csv")
    assert columns == ["episode_id", "task", "success", "num_frames", "seed"]
    assert [r["task"] for r in rows] == TASKS
    leftovers = [p.name for p in out.rglob("*") if p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_videos_decode(corpus):
    out, _ = corpus
    _, rows = read_csv(out / "videos" / "metadata.csv")
    for row in rows:
        with av.open(str(out / "videos" / row["file"])) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert float(stream.average_rate) == pytest.approx(FPS)
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        assert frames.shape == (int(row["num_frames"]), RESOLUTION, RESOLUTION, 3)
        means = frames.reshape(len(frames), -1).mean(axis=1)
        assert means.min() > 20, f"{row['file']}: black frames"
        change = np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean()
        assert change > 1.0, f"{row['file']}: the robot does not move"


def test_ground_truth(corpus):
    out, records = corpus
    _, rows = read_csv(out / "ground_truth" / "episodes.csv")
    for record, row in zip(records, rows, strict=True):
        gt = load_npz(out / "ground_truth" / f"{row['episode_id']}.npz")
        assert set(gt) == {"actions", "success", "state", "frame_step"}
        num_frames = int(row["num_frames"])
        assert num_frames == record["num_frames"] > 10
        assert gt["actions"].dtype == np.float32
        assert gt["actions"].shape == (num_frames, SPF * 4)
        assert np.abs(gt["actions"]).max() <= 1.0
        assert gt["success"].dtype == bool and gt["success"].shape == (num_frames,)
        assert gt["state"].dtype == np.float32 and gt["state"].shape == (num_frames, 39)
        assert np.issubdtype(gt["frame_step"].dtype, np.integer)
        np.testing.assert_array_equal(gt["frame_step"], np.arange(num_frames) * SPF)
        # the expert solves these tasks, and recording goes on a little after that
        assert row["success"] == "True" and record["success"]
        assert gt["success"][-1] and not gt["success"][0]
        assert int(row["seed"]) == record["seed"]


def test_same_seed_same_outputs(corpus, cli_corpus):
    out, _ = corpus
    for episode_id in episode_ids(TASKS, 1):
        a = load_npz(out / "ground_truth" / f"{episode_id}.npz")
        b = load_npz(cli_corpus / "ground_truth" / f"{episode_id}.npz")
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{episode_id}: {key}")
        video = f"videos/{episode_id}.mp4"
        assert (out / video).read_bytes() == (cli_corpus / video).read_bytes()
    assert (out / "videos/metadata.csv").read_text() == (
        cli_corpus / "videos/metadata.csv"
    ).read_text()


def test_other_seed_other_episode(corpus, tmp_path):
    out, _ = corpus
    generate(small_config(tasks=TASKS[:1], seed=1), tmp_path, workers=1)
    episode_id = episode_ids(TASKS[:1], 1)[0]
    a = load_npz(out / "ground_truth" / f"{episode_id}.npz")
    b = load_npz(tmp_path / "ground_truth" / f"{episode_id}.npz")
    assert a["state"].shape != b["state"].shape or not np.allclose(a["state"], b["state"])
    assert a["actions"].shape != b["actions"].shape or not np.allclose(a["actions"], b["actions"])


def test_bad_config_is_rejected(tmp_path, capsys):
    with pytest.raises(ConfigError, match="nope-v3"):
        generate(small_config(tasks=["nope-v3"]), tmp_path, workers=1)
    assert not (tmp_path / "videos").exists()
    for override, value in [
        ("demo.tasks=[drawer-open-v3,nope-v3]", "nope-v3"),
        ("demo.episodes_per_task=0", "episodes_per_task=0"),
        ("demo.resolution=8", "resolution=8"),
        ("demo.action_noise_steps=-1", "action_noise_steps=-1"),
    ]:
        assert main([f"output_dir={tmp_path}", override]) == 2
        assert value in capsys.readouterr().err
    assert main(["demo.resolution=64"]) == 2  # no output_dir
    assert "output_dir" in capsys.readouterr().err


def _noise_samples(steps: float, gripper: bool = True, n: int = 20000) -> np.ndarray:
    cfg = DemoConfig(action_noise=0.5, action_noise_steps=steps, action_noise_gripper=gripper)
    noise = demo_videos.ActionNoise(cfg, 4, np.random.default_rng(0))
    return np.stack([noise.step() for _ in range(n)])  # (n, 4)


def test_action_noise_correlation_and_spread():
    """Every step's noise has std action_noise; its lag-1 correlation is exp(-1 / steps)."""
    for steps in (0.0, 16.0):
        x = _noise_samples(steps)
        assert np.allclose(x.std(0), 0.5, rtol=0.1 if steps else 0.03)
        lag1 = np.mean([np.corrcoef(x[:-1, d], x[1:, d])[0, 1] for d in range(4)])
        assert lag1 == pytest.approx(np.exp(-1 / steps) if steps else 0.0, abs=0.03)
    # the mean over a 16-step frame pair keeps most of correlated noise, a quarter of i.i.d.
    iid, corr = (_noise_samples(s)[:19200].reshape(-1, 16, 4).mean(1).std() for s in (0, 16))
    assert iid == pytest.approx(0.5 / 4, rel=0.15) and corr > 2.5 * iid
    x = _noise_samples(16.0, gripper=False)
    assert np.all(x[:, 3] == 0) and np.all(x[:, :3].std(0) > 0.3)
    assert _noise_samples(0.0, n=5)[:, 3].any()  # by default the gripper gets noise too
    none = demo_videos.ActionNoise(DemoConfig(), 4, np.random.default_rng(0))
    assert not none.step().any()


def test_independent_noise_draws_as_before():
    """action_noise_steps=0 consumes the generator exactly as the renderer always did (one
    normal(0, std, 4) per step, nothing at construction): corpora rendered before correlated
    noise existed stay byte-identical."""
    cfg = DemoConfig(action_noise=0.5)
    mine, ref = np.random.default_rng(7), np.random.default_rng(7)
    noise = demo_videos.ActionNoise(cfg, 4, mine)
    for _ in range(50):
        assert np.array_equal(noise.step(), ref.normal(0.0, 0.5, size=4))
    assert mine.bit_generator.state == ref.bit_generator.state


def test_black_frames_are_an_error():
    with pytest.raises(RuntimeError, match="door-open-v3.*door-open-v3_ep003"):
        demo_videos._check_not_black(
            np.zeros((20, 16, 16, 3), np.uint8), "door-open-v3", "door-open-v3_ep003"
        )
    demo_videos._check_not_black(np.full((20, 16, 16, 3), 90, np.uint8), "t", "t_ep000")


def test_every_task_has_an_instruction():
    from metaworld.policies import ENV_POLICY_MAP

    assert set(INSTRUCTIONS) == set(ENV_POLICY_MAP)
    assert all(text and text == text.strip() for text in INSTRUCTIONS.values())
    assert instruction_for("drawer-open-v3") == "open the drawer"
    with pytest.raises(KeyError, match="nope-v3.*drawer-open-v3"):
        instruction_for("nope-v3")
