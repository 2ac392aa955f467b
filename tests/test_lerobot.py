"""hlrp.low_level.lerobot: LeRobotDataset v3 folders (written here, nothing downloaded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from hlrp.low_level.episodes import EpisodeError, open_episodes, write_episodes
from hlrp.low_level.lerobot import read_lerobot
from lerobot_data import episode_level, frame_level, write_lerobot_v3

S = 32
CAMERA = "observation.images.top"
PICK, OPEN = "pick up the cube", "open the drawer"
#: 5 episodes of 2 tasks; videos hold episodes (0, 1), (2, 3), (4); data files (0, 1, 2), (3, 4)
EPISODES = [(PICK, 12), (OPEN, 9), (PICK, 15), (OPEN, 7), (PICK, 10)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("lerobot") / "my_dataset"
    return root, write_lerobot_v3(root, EPISODES)


def copy_of(dataset: tuple[Path, dict[str, Any]], tmp_path: Path) -> Path:
    root = tmp_path / "my_dataset"
    shutil.copytree(dataset[0], root)
    return root


def edit_info(root: Path, change) -> None:
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))


def check_frames(frames: np.ndarray, episode_index: int) -> None:
    """Top half: the frame's index in its episode; bottom half: the episode (within 10 levels)."""
    assert frames.dtype == np.uint8 and frames.shape[1:] == (S, S, 3)
    top = frames[:, 2 : S // 2 - 4].reshape(len(frames), -1).mean(1)
    bottom = frames[:, S // 2 + 4 : S - 2].reshape(len(frames), -1).mean(1)
    expected = np.array([frame_level(i) for i in range(len(frames))])
    assert np.abs(top - expected).max() < 10, (episode_index, top.round(), expected)
    assert np.abs(bottom - episode_level(episode_index)).max() < 10, (episode_index, bottom)


@pytest.mark.parametrize("decoders", [("decord", "pyav"), ("pyav",)])
def test_reads_every_episode(dataset, decoders) -> None:
    root, written = dataset
    episodes, skipped = read_lerobot(root, S, decoders=decoders)
    assert skipped == []
    assert [e.episode_id for e in episodes] == [f"my_dataset_ep{i:06d}" for i in range(5)]
    for i, ep in enumerate(episodes):
        assert ep.task == ep.instruction == EPISODES[i][0]
        assert len(ep.frames) == len(ep.actions) == written["lengths"][i]
        assert ep.actions.dtype == np.float32 and ep.state is not None
        np.testing.assert_array_equal(ep.actions, written["actions"][i])
        np.testing.assert_array_equal(ep.state, written["state"][i])
        assert ep.state.dtype == np.float32 and ep.state.shape[1] == 8
        assert ep.fps == 10.0
        assert ep.source == str(root / written["video_files"][i])
        check_frames(ep.frames, i)


def test_episodes_per_task(dataset) -> None:
    root, _ = dataset
    episodes, skipped = read_lerobot(root, S, episodes_per_task=1, camera=CAMERA)
    assert skipped == []
    assert [(e.episode_id, e.task) for e in episodes] == [
        ("my_dataset_ep000000", PICK),
        ("my_dataset_ep000001", OPEN),
    ]
    episodes, _ = read_lerobot(root, S, episodes_per_task=2)
    assert [e.episode_id[-1] for e in episodes] == ["0", "1", "2", "3"]


def test_tasks_from_tasks_parquet(dataset, tmp_path) -> None:
    """Episodes metadata without a "tasks" column: the data's task_index and tasks.parquet."""
    root = copy_of(dataset, tmp_path)
    for path in (root / "meta" / "episodes").glob("*/*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["tasks"]), path)
    episodes, _ = read_lerobot(root, S, episodes_per_task=1)
    assert [(e.episode_id[-1], e.task) for e in episodes] == [("0", PICK), ("1", OPEN)]


def test_missing_info_json(dataset, tmp_path) -> None:
    root = copy_of(dataset, tmp_path)
    (root / "meta" / "info.json").unlink()
    with pytest.raises(EpisodeError, match="info.json"):
        read_lerobot(root, S)
    with pytest.raises(EpisodeError, match="no such folder"):
        read_lerobot(tmp_path / "nowhere", S)


def test_unknown_camera(dataset) -> None:
    with pytest.raises(EpisodeError) as e:
        read_lerobot(dataset[0], S, camera="observation.images.wrist")
    assert "observation.images.wrist" in str(e.value) and CAMERA in str(e.value)


def _drop_action(info: dict) -> None:
    del info["features"]["action"]


def _image_camera(info: dict) -> None:
    info["features"][CAMERA]["dtype"] = "image"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda info: info.update(codebase_version="v2.1"), "'v2.1' is not supported.*v3.0"),
        (_drop_action, "no 'action' feature"),
        (_image_camera, "no video feature.*Image features.*not supported"),
    ],
    ids=["version", "no-action", "image-camera"],
)
def test_structural_errors(dataset, tmp_path, change, message) -> None:
    root = copy_of(dataset, tmp_path)
    edit_info(root, change)
    with pytest.raises(EpisodeError, match=message) as e:
        read_lerobot(root, S)
    assert "info.json" in str(e.value)


def test_image_camera_named(dataset, tmp_path) -> None:
    root = copy_of(dataset, tmp_path)
    edit_info(
        root, lambda info: info["features"].update({"observation.images.png": {"dtype": "image"}})
    )
    with pytest.raises(EpisodeError, match="image feature.*not supported"):
        read_lerobot(root, S, camera="observation.images.png")


def test_missing_parquet(dataset, tmp_path) -> None:
    root = copy_of(dataset, tmp_path)
    missing = root / "data" / "chunk-000" / "file-001.parquet"
    missing.unlink()
    with pytest.raises(EpisodeError, match=f"{missing}: missing"):
        read_lerobot(root, S)
    shutil.rmtree(root / "meta" / "episodes")
    with pytest.raises(EpisodeError, match="meta/episodes"):
        read_lerobot(root, S)


def test_bimanual_14d(tmp_path) -> None:
    root = tmp_path / "aloha"
    written = write_lerobot_v3(root, [(OPEN, 6), (PICK, 8)], action_dim=14, state_dim=14)
    episodes, skipped = read_lerobot(root, S)
    assert skipped == []
    assert [e.actions.shape for e in episodes] == [(6, 14), (8, 14)]
    assert [e.state.shape for e in episodes if e.state is not None] == [(6, 14), (8, 14)]
    np.testing.assert_array_equal(episodes[1].actions, written["actions"][1])
    for i, ep in enumerate(episodes):
        check_frames(ep.frames, i)


def test_no_state(tmp_path) -> None:
    root = tmp_path / "no_state"
    write_lerobot_v3(root, [(OPEN, 5)], action_dim=4, state_dim=0)
    (episode,), _ = read_lerobot(root, S)
    assert episode.state is None and episode.actions.shape == (5, 4)


def test_short_video_is_skipped(tmp_path) -> None:
    root = tmp_path / "cut"
    # episode 1 ends its video file with 6 of its 10 frames
    write_lerobot_v3(root, [(PICK, 8), (OPEN, 10, 6), (PICK, 9)])
    episodes, skipped = read_lerobot(root, S)
    assert [e.episode_id for e in episodes] == ["cut_ep000000", "cut_ep000002"]
    assert [s["input"] for s in skipped] == ["cut_ep000001"]
    assert "file-000.mp4" in skipped[0]["reason"]
    assert "holds 6 of the episode's 10 frames" in skipped[0]["reason"]
    check_frames(episodes[0].frames, 0)
    check_frames(episodes[1].frames, 2)


def test_round_trip(dataset, tmp_path) -> None:
    root, written = dataset
    episodes, skipped = read_lerobot(root, S, episodes_per_task=2)
    out = write_episodes(episodes, tmp_path / "episodes", skipped)
    again = open_episodes(tmp_path / "episodes")
    assert (out.action_dim, out.state_dim, again.action_dim, again.state_dim) == (7, 8, 7, 8)
    assert again.fps == 10.0 and again.tasks == sorted([PICK, OPEN])
    for i, ep in enumerate(again):
        assert ep.episode_id == f"my_dataset_ep{i:06d}" and ep.task == EPISODES[i][0]
        np.testing.assert_array_equal(ep.actions, written["actions"][i])
        np.testing.assert_array_equal(ep.state, written["state"][i])
        np.testing.assert_array_equal(ep.frames, episodes[i].frames)
