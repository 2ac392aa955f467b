"""Stage 3 throughput: finetuning samples/s, policy latency per action, closed-loop steps/s.

    python bench/low_level_throughput.py --preset tiny                    # CPU
    python bench/low_level_throughput.py --preset 0.5b --batch 32 --bf16  # a GPU

1. Finetuning: full training steps (forward, backward, clipping, AdamW) of a policy (the
   preset's backbone with the ``l1_chunk`` head, chunk 8, 4-D actions and state) on batches
   made by the training collator from random frames; samples/s, peak memory.
2. Latency: ``VLAPolicy.predict`` on one frame (batch 1), for the ``l1_chunk``, ``flow`` and
   ``bins`` heads: milliseconds per query and per action (a query yields ``chunk`` actions).
3. Closed loop (needs Meta-World): ``--episodes`` evaluation episodes of
   ``button-press-topdown-v3`` with the untrained ``l1_chunk`` policy, simulator steps/s
   with the policy in the loop, against the same episodes driven by a constant action (the
   simulator and renderer alone), in the same run.

Random weights: speed does not depend on them. JSON to bench/results/low_level_<preset>_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402
from foundation_throughput import PRESETS  # noqa: E402
from hlrp.foundation.families import build_tiny  # noqa: E402
from hlrp.low_level.episodes import Episode, write_episodes  # noqa: E402
from hlrp.low_level.policy import PolicyMeta, VLAPolicy  # noqa: E402
from hlrp.low_level.train import ChunkDataset, Collate  # noqa: E402


def episodes(folder: Path, size: int, n: int = 4, T: int = 40):
    rng = np.random.default_rng(0)
    eps = [
        Episode(
            f"ep{i}",
            "button-press-topdown-v3",
            "press the button from the top",
            rng.integers(0, 255, (T, size, size, 3), dtype=np.uint8),
            rng.normal(size=(T, 4)).astype(np.float32),
            rng.normal(size=(T, 4)).astype(np.float32),
            20.0,
        )
        for i in range(n)
    ]
    return write_episodes(eps, folder)


def make_policy(backbone: Path, eps, head: str, size: int) -> tuple[VLAPolicy, ChunkDataset]:
    meta = PolicyMeta(
        head=head,
        chunk=8,
        action_dim=4,
        state_dim=4,
        family="",
        stats=eps.stats,
        hidden=256,
        image_size=size,
        tasks=eps.tasks,
    )
    ds = ChunkDataset(eps, meta)
    policy = VLAPolicy.create(
        "scratch", meta, backbone=str(backbone), train_actions=ds.all_actions()
    )
    return policy, ds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def finetune_speed(args, policy, ds, device) -> dict:
    policy.to(device).train()
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5)
    batch = Collate(policy)([ds[i % len(ds)] for i in range(args.batch)])
    batch = {k: v.to(device) for k, v in batch.items()}
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def step() -> None:
        with amp:
            loss, _ = policy.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(args.repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        best = min(best, (time.perf_counter() - t0) / args.steps)
    row = {
        "batch": args.batch,
        "seconds_per_step": best,
        "samples_per_s": args.batch / best,
        "parameters": sum(p.numel() for p in policy.parameters()),
    }
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"finetune": row}), flush=True)
    return row


def latency(args, policy, ds, device, head: str) -> dict:
    policy.to(device).eval()
    if args.bf16:
        policy.to(torch.bfloat16)
    item = ds[0]
    image, state = item["image"], np.asarray(item["state"])[None]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        policy.predict([image], [item["instruction"]], state, generator=g)
    times = []
    for _ in range(args.queries):
        sync(device)
        t0 = time.perf_counter()
        policy.predict([image], [item["instruction"]], state, generator=g)
        sync(device)
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1000
    row = {
        "head": head,
        "per_query_ms_p50": float(np.median(ms)),
        "per_query_ms_mean": float(ms.mean()),
        "per_action_ms": float(np.median(ms) / policy.meta.chunk),
    }
    print(json.dumps({"latency": row}), flush=True)
    return row


def closed_loop(args, policy, device) -> dict | None:
    try:  # the simulator (metaworld, mujoco) is optional: pip install .[sim]
        from hlrp.common.config import load
        from hlrp.low_level.evaluate import ChunkExecutor, rollout
        from hlrp.sim.rollout import SimTask

        demo = load(["experiment=ft_demo"]).demo
        sim = SimTask("button-press-topdown-v3", demo, seed=1000)  # imports metaworld
    except ImportError as e:
        print(f"closed loop skipped: {e}", flush=True)
        return None
    policy.to(device).eval()
    if args.bf16:
        policy.to(torch.bfloat16)
    try:
        t0, steps = time.perf_counter(), 0
        for k in range(args.episodes):  # the simulator and renderer alone
            sim.reset(k)
            while not sim.done:
                sim.step(np.zeros(4))
            steps += sim.steps
        sim_only = steps / (time.perf_counter() - t0)
        ex = ChunkExecutor(policy.meta.chunk)
        g = torch.Generator().manual_seed(0)
        t0, steps, queries = time.perf_counter(), 0, 0
        for k in range(args.episodes):
            r = rollout(policy, sim, k, ex, g, keep_frames=False)
            steps += r["sim_steps"]
            queries += len(r["latencies"])
        with_policy = steps / (time.perf_counter() - t0)
    finally:
        sim.close()
    row = {
        "episodes": args.episodes,
        "sim_steps_per_s_with_policy": with_policy,
        "sim_steps_per_s_simulator_only": sim_only,
        "policy_queries": queries,
        "steps_per_frame": demo.steps_per_frame,
    }
    print(json.dumps({"closed_loop": row}), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--no-sim", action="store_true")
    args = p.parse_args()
    preset = PRESETS[args.preset]
    size = preset["image_size"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    out = {"args": vars(args), "family": preset["family"], "device": str(device)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        backbone = build_tiny(
            preset["family"],
            tmp / "backbone",
            image_size=size,
            text=preset["text"],
            vision=preset["vision"],
        )
        eps = episodes(tmp / "episodes", size)
        policy, ds = make_policy(backbone, eps, "l1_chunk", size)
        out["finetune"] = finetune_speed(args, policy, ds, device)
        out["latency"] = [latency(args, policy, ds, device, "l1_chunk")]
        for head in ("flow", "bins"):
            other, ods = make_policy(backbone, eps, head, size)
            out["latency"].append(latency(args, other, ods, device, head))
            del other
        if not args.no_sim:
            policy, ds = make_policy(backbone, eps, "l1_chunk", size)
            out["closed_loop"] = closed_loop(args, policy, device)
    save(f"low_level_{args.preset}_{device.type}", out)


if __name__ == "__main__":
    main()
