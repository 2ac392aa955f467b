"""Merge the manifests of the preprocess jobs into one shard index.

    python -m hlrp.data.index OUT.json PART_DIR [PART_DIR ...]

``OUT.json`` lists every shard (path relative to it, samples, bytes) and the corpus totals;
readers take it as their ``shards`` argument (:func:`hlrp.data.shards.resolve_shards`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from hlrp.common.logging import setup_logging
from hlrp.data.shards import write_index


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hlrp.data.index", description=__doc__)
    parser.add_argument("output", help="index.json to write")
    parser.add_argument("parts", nargs="+", help="preprocess output folders (or manifest.json)")
    args = parser.parse_args(argv)
    log = setup_logging()
    manifests = []
    for part in args.parts:
        p = Path(part)
        m = p / "manifest.json" if p.is_dir() else p
        if not m.is_file():
            print(f"error: {m} does not exist (did the preprocess job finish?)", file=sys.stderr)
            return 1
        manifests.append(m)
    index = write_index(args.output, manifests)
    t = index["totals"]
    log.info(
        "%s: %d shards, %d clips, %d frames, %.1f MB from %d videos %s",
        args.output,
        t["shards"],
        t["clips"],
        t["frames"],
        t["bytes"] / 1e6,
        t["videos"],
        t["videos_by_status"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
