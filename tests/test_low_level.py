"""Stage 3: every head learns on tiny data, bins round-trip, a saved policy predicts what it
predicted before saving, chunk execution and temporal ensembling, exact resume after SIGKILL,
and clear errors (with nothing written) for a missing start, mismatched actions, a bad
LeRobot folder. The closed-loop check (a tiny policy overfits demo episodes and solves
button-press-topdown in Meta-World) is marked slow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hlrp.foundation.export import resolve_backbone
from hlrp.low_level.episodes import Episode, open_episodes, write_episodes
from hlrp.low_level.evaluate import ChunkExecutor
from hlrp.low_level.policy import BinTokenizer, Normalizer, PolicyMeta, VLAPolicy
from hlrp.low_level.train import ChunkDataset, Collate

os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


def synthetic_episodes(folder: Path, n: int = 4, T: int = 12, action_dim: int = 4, seed: int = 0):
    """Episodes whose action is a function of the frame: a bright square's position."""
    rng = np.random.default_rng(seed)
    eps = []
    for e in range(n):
        frames = np.zeros((T, SIZE, SIZE, 3), np.uint8)
        actions = np.zeros((T, action_dim), np.float32)
        for t in range(T):
            x = int(rng.integers(0, SIZE - 8))
            frames[t, 4:12, x : x + 8] = 255
            actions[t] = (x / (SIZE - 8)) * 2 - 1  # every dim: where the square is
        state = rng.normal(size=(T, 3)).astype(np.float32)
        task = f"task{e % 2}"
        eps.append(
            Episode(f"{task}_ep{e:03d}", task, f"do task {e % 2}", frames, actions, state, 10.0)
        )
    return write_episodes(eps, folder)


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    return synthetic_episodes(tmp_path_factory.mktemp("episodes"))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return resolve_backbone("tiny-smolvlm", tmp_path_factory.mktemp("bb"), SIZE)


def meta_for(episodes, head: str, chunk: int = 4) -> PolicyMeta:
    return PolicyMeta(
        head=head,
        chunk=chunk,
        action_dim=episodes.action_dim,
        state_dim=episodes.state_dim,
        family="",
        stats=episodes.stats,
        hidden=64,
        bins=16,
        flow_steps=4,
        image_size=SIZE,
        tasks=episodes.tasks,
    )


def make_policy(episodes, backbone, head: str) -> tuple[VLAPolicy, ChunkDataset]:
    meta = meta_for(episodes, head)
    ds = ChunkDataset(episodes, meta)
    policy = VLAPolicy.create("scratch", meta, backbone=backbone, train_actions=ds.all_actions())
    return policy, ds


def test_bins_round_trip_within_one_bin_width():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(500, 2)), rng.uniform(-1, 1, size=(500, 1))], 1)
    tok = BinTokenizer.fit(x, 256)
    idx = tok.encode(x)
    assert idx.min() >= 0 and idx.max() < 256
    width = np.stack([np.diff(tok.edges[d])[idx[:, d]] for d in range(3)], 1)  # (N, D)
    assert (np.abs(tok.decode(idx) - x) <= width + 1e-6).all()
    assert (tok.encode(np.full((1, 3), 1e9)) == 255).all()  # outside: the last bin


@pytest.mark.parametrize("kind", ["mean_std", "quantile"])
def test_normalizer_round_trips(kind):
    x = np.random.default_rng(1).normal(3, 2, size=(200, 4)).astype(np.float32)
    from hlrp.low_level.episodes import statistics

    n = Normalizer(kind, statistics([x]))
    y = n(x)
    if kind == "quantile":
        assert y.min() >= -1 and y.max() <= 1
        inside = (x > np.quantile(x, 0.01, 0)) & (x < np.quantile(x, 0.99, 0))
        assert np.allclose(n.inverse(y)[inside], x[inside], atol=1e-4)
    else:
        assert np.allclose(n.inverse(y), x, atol=1e-4)
        assert abs(y.mean()) < 1e-3


@pytest.mark.parametrize("head", ["l1_chunk", "flow", "bins"])
def test_each_head_learns_on_tiny_data(head, episodes, backbone):
    torch.manual_seed(0)
    policy, ds = make_policy(episodes, backbone, head)
    batch = Collate(policy)([ds[i] for i in range(0, len(ds), 3)])
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=3e-3)

    def fixed_loss() -> float:  # the same flow noise and times before and after
        torch.manual_seed(123)
        with torch.no_grad():
            return float(policy.loss(batch)[0])

    before = fixed_loss()
    for _ in range(50):
        loss, _ = policy.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_loss()
    assert after < (0.75 if head == "flow" else 0.6) * before, (head, before, after)


@pytest.mark.parametrize("head", ["l1_chunk", "bins", "flow"])
def test_saved_policy_predicts_the_same(head, episodes, backbone, tmp_path):
    policy, ds = make_policy(episodes, backbone, head)
    policy.eval()
    ep = episodes.load(episodes.episodes[0])
    images, texts = [np.asarray(ep.frames[0]), np.asarray(ep.frames[1])], [ep.instruction] * 2
    state = np.asarray(ep.state[:2])
    before = policy.predict(images, texts, state, generator=torch.Generator().manual_seed(0))
    assert before.shape == (2, 4, episodes.action_dim)
    policy.save(tmp_path / "p")
    again = VLAPolicy.load(tmp_path / "p").eval()
    after = again.predict(images, texts, state, generator=torch.Generator().manual_seed(0))
    assert np.allclose(before, after, atol=1e-5)
    assert json.loads((tmp_path / "p" / "hlrp_policy.json").read_text())["head"] == head


@pytest.mark.parametrize("head", ["l1_chunk", "flow"])
def test_policy_cast_to_bf16_predicts_like_float32(head, episodes, backbone):
    """A policy cast with ``.to(torch.bfloat16)`` to serve it (the state and the heads' noise
    are float32) predicts what the float32 policy predicts, to bf16 precision."""
    policy, _ = make_policy(episodes, backbone, head)
    policy.eval()
    ep = episodes.load(episodes.episodes[0])
    images, texts = [np.asarray(ep.frames[0])], [ep.instruction]
    state = np.asarray(ep.state[:1])
    full = policy.predict(images, texts, state, generator=torch.Generator().manual_seed(0))
    half = policy.to(torch.bfloat16).predict(
        images, texts, state, generator=torch.Generator().manual_seed(0)
    )
    assert half.dtype == full.dtype and half.shape == full.shape
    scale = np.abs(full).max() + 1e-3
    assert np.abs(half - full).max() < 0.1 * scale, (full, half)


def test_chunks_execute_in_order_and_ensembles_average():
    ex = ChunkExecutor(chunk=4, execute=3)
    chunk = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert ex.needs_query()
    ex.add(chunk)
    taken = [ex.next() for _ in range(3)]
    assert np.array_equal(np.stack(taken), chunk[:3]) and ex.needs_query()

    ens = ChunkExecutor(chunk=3, temporal_ensemble=0.5)
    ens.add(np.array([[0.0], [10.0], [20.0]]))
    assert ens.next()[0] == 0.0
    ens.add(np.array([[100.0], [200.0], [300.0]]))  # predicted at t=1 for t=1, 2, 3
    w = np.exp(-0.5 * np.arange(2))
    assert np.isclose(ens.next()[0], (w[0] * 10 + w[1] * 100) / w.sum())  # oldest weighs most


# --------------------------------------------------------------------------------------
# the command line: training, exact resume, errors
# --------------------------------------------------------------------------------------
def train_cmd(episodes_folder, out, backbone, *extra):
    return [
        sys.executable,
        "-m",
        "hlrp.low_level.train",
        "experiment=ft_demo",
        f"foundation.model.backbone={backbone}",
        f"foundation.model.image_size={SIZE}",
        "init=scratch",
        f"data.episodes={episodes_folder}/index.json",
        f"output_dir={out}",
        "data.batch_size=6",
        "data.num_workers=0",
        "model.hidden=64",
        "model.chunk=4",
        "model.head=flow",  # random noise every step: exact resume must restore the RNG
        "training.max_steps=10",
        "training.checkpoint_every_n_steps=4",
        "training.log_every_n_steps=1",
        "cluster.wandb_mode=disabled",
        *extra,
    ]


def _losses(csv_path: Path) -> dict[int, float]:
    import csv

    with open(csv_path, newline="") as f:
        return {
            int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]
        }


def test_killed_finetuning_resumes_exactly(episodes, backbone, tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(train_cmd(episodes.folder, ref, backbone), check=True, capture_output=True)
    out = tmp_path / "killed"
    env = {**os.environ, "HLRP_FAULT_KILL_AT_STEP": "6"}
    proc = subprocess.run(train_cmd(episodes.folder, out, backbone), env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "policy").exists()
    proc = subprocess.run(train_cmd(episodes.folder, out, backbone), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr
    reference = _losses(ref / "logs" / "metrics.csv")
    resumed = _losses(out / "logs" / "metrics.csv")
    assert sorted(resumed) and min(resumed) > 3  # the rerun started at the step-4 checkpoint
    for step, value in resumed.items():
        assert value == reference[step], step
    from safetensors.torch import load_file

    a = load_file(ref / "policy" / "head.safetensors")
    b = load_file(out / "policy" / "head.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((out / "policy" / "hlrp_policy.json").read_text())
    assert meta["global_step"] == 10 and meta["init"] == "scratch"


def test_missing_start_and_mismatched_actions_fail_clearly(episodes, backbone, tmp_path):
    out = tmp_path / "nothing"
    cmd = train_cmd(episodes.folder, out, backbone, "init=/no/such/foundation")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and "/no/such/foundation" in proc.stderr
    assert not out.exists()
    empty = tmp_path / "not_a_model"  # a folder, but neither stage 2's model nor a policy
    empty.mkdir()
    proc = subprocess.run(
        train_cmd(episodes.folder, out, backbone, f"init={empty}"), capture_output=True, text=True
    )
    assert proc.returncode == 2 and "hlrp_foundation.json" in proc.stderr
    assert not out.exists()

    # a policy of 4-D actions cannot continue on 7-D episodes
    policy, _ = make_policy(episodes, backbone, "l1_chunk")
    policy.save(tmp_path / "p4")
    seven = synthetic_episodes(tmp_path / "ep7", action_dim=7)
    cmd = train_cmd(seven.folder, out, backbone, f"init={tmp_path / 'p4'}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and "4-D actions" in proc.stderr and "7-D" in proc.stderr
    assert not out.exists()


def test_a_lerobot_folder_without_info_json_writes_nothing(tmp_path):
    bad = tmp_path / "dataset"
    (bad / "meta").mkdir(parents=True)
    out = tmp_path / "episodes"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hlrp.low_level.episodes",
            f"data.source={bad}",
            f"output_dir={out}",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "info.json" in proc.stderr
    assert not out.exists()


def test_episode_index_keeps_dims_and_statistics(episodes):
    again = open_episodes(episodes.folder)
    assert again.action_dim == 4 and again.state_dim == 3
    assert len(again.stats["action"]["mean"]) == 4
    ep = again.load(again.episodes[0])
    assert ep.frames.shape == (12, SIZE, SIZE, 3) and ep.actions.dtype == np.float32


# --------------------------------------------------------------------------------------
# closed loop (slow): overfit a few demo episodes of one easy task, then solve it in sim
# --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_tiny_policy_solves_button_press_in_closed_loop(tmp_path):
    pytest.importorskip("metaworld")
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    task = "button-press-topdown-v3"
    demo = tmp_path / "demo"
    common = ["experiment=ft_demo", f"demo.tasks=[{task}]", "demo.episodes_per_task=6"]
    subprocess.run(
        [sys.executable, "-m", "hlrp.sim.demo_videos", f"output_dir={demo}", *common],
        check=True,
        env=env,
        capture_output=True,
    )
    eps = tmp_path / "episodes"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "hlrp.low_level.episodes",
            *common,
            "data.source=demo",
            f"input_dir={demo}",
            "data.episodes_per_task=0",
            f"output_dir={eps}",
        ],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "ft"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "hlrp.low_level.train",
            *common,
            "init=scratch",
            "foundation.model.backbone=tiny-smolvlm",
            f"data.episodes={eps}/index.json",
            f"output_dir={out}",
            "training.max_steps=400",
            "cluster.wandb_mode=disabled",
        ],
        check=True,
        capture_output=True,
    )
    results = []
    for attempt in range(2):  # the same seed twice: the same rollouts
        ev = tmp_path / f"ev{attempt}"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "hlrp.low_level.evaluate",
                *common,
                f"policy_dir={out}/policy",
                f"output_dir={ev}",
                "evaluation.episodes_per_task=4",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads((ev / "results.json").read_text()))
        assert (ev / "videos" / f"{task}_ep000.mp4").stat().st_size > 1000
    r = results[0]["tasks"][task]
    assert r["successes"] >= 1, r
    assert results[0]["tasks"] == results[1]["tasks"]
    assert (tmp_path / "ev0" / "rollouts.csv").read_text() == (
        tmp_path / "ev1" / "rollouts.csv"
    ).read_text()


def test_lora_and_frozen_vision_finetune_and_export_merged(episodes, backbone, tmp_path):
    """The one-GPU recipe (ft_local: LoRA on the language model, frozen vision tower) on the
    tiny backbone: it trains, and the exported policy (adapters merged into the weights)
    loads without peft and predicts actions of the right shape."""
    out = tmp_path / "lora"
    cmd = train_cmd(
        episodes.folder,
        out,
        backbone,
        "model.head=l1_chunk",
        "model.lora_rank=4",
        "model.freeze_vision=true",
        "training.max_steps=4",
    )
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "M training" in proc.stderr
    policy = VLAPolicy.load(out / "policy").eval()
    assert not any("lora" in k for k in policy.backbone.state_dict())
    ep = episodes.load(episodes.episodes[0])
    pred = policy.predict([np.asarray(ep.frames[0])], [ep.instruction], np.asarray(ep.state[:1]))
    assert pred.shape == (1, 4, episodes.action_dim) and np.isfinite(pred).all()
