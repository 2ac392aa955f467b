"""Small matplotlib helpers shared by the training plots and the reports."""

from __future__ import annotations

import os
from pathlib import Path

from hlrp.common.io import atomic_open


def finish_axis(ax, title: str, logy: bool = False, xlabel: str = "step") -> None:
    """Title, label, grid and legend of one panel of a training plot."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def save_png(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Lay out, write atomically (creating the folder) and close ``fig``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    plt.close(fig)
