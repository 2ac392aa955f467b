"""Command-line front end shared by all ``python -m hlrp.<stage>`` entry points.

Arguments are Hydra overrides (``experiment=laq_debug data.batch_size=16``). A stage's
command accepts its namespace's short keys (in ``hlrp.laq.*``, ``data.batch_size`` means
``laq.data.batch_size``). Path values (``input_dir=``, ``output_dir=``, ``data.shards=``...)
are taken literally, whatever characters they hold. Two flags:
``--help`` prints usage and the experiments, ``--cfg`` prints the resolved config and exits.
We compose with Hydra's compose API rather than ``@hydra.main`` so that no run folders are
created and no working directory is changed: Snakemake owns every output path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import OmegaConf

from hlrp.common.config import ConfigError, RootConfig, compose_config, experiments, to_object
from hlrp.common.logging import setup_logging


def run(
    main: Callable[[RootConfig], Any],
    argv: Sequence[str] | None,
    usage: str,
    stage: str | None = None,
    expected: tuple[type[BaseException], ...] = (),
) -> int:
    """Parse ``argv`` into a validated :class:`RootConfig` and call ``main`` with it.

    ``stage`` (``laq``, ``foundation``, ``low_level``) is the namespace short keys refer to.
    ``expected`` are the errors of bad input ``main`` may raise: each is printed as one
    ``error: ...`` line and the command exits with 2 (no traceback).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(usage.strip())
        print("\nexperiments: " + ", ".join(experiments()))
        print("any config value can be changed with key=value, e.g. data.batch_size=16")
        return 0
    show = "--cfg" in args
    overrides = [a for a in args if a != "--cfg"]
    bad = [a for a in overrides if "=" not in a]
    if bad:
        print(f"error: arguments must be key=value Hydra overrides, got {bad}", file=sys.stderr)
        return 2
    try:
        composed = compose_config(overrides, stage=stage)
        cfg = to_object(composed)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if show:
        print(OmegaConf.to_yaml(composed, resolve=True))
        return 0
    setup_logging()
    try:
        rc = main(cfg)
    except expected as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return rc if isinstance(rc, int) else 0  # a stage's result object means success
