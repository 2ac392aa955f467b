"""The layout shows the architecture: no back-and-forth imports between the package's parts.

``common`` imports nothing else of hlrp; ``data`` only ``common``; a stage folder imports
``common``, ``data``, itself and, for stage k, only stage k-1's public loading API.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

SRC = REPO / "src" / "hlrp"
ALLOWED = {
    "common": {"common"},
    "data": {"common", "data"},
    "sim": {"common", "data", "sim"},
    "laq": {"common", "data", "laq"},
    "foundation": {"common", "data", "foundation", "laq.export"},
    "low_level": {"common", "data", "sim", "low_level", "foundation.export"},
}


def hlrp_imports(path: Path) -> set[str]:
    """Every ``hlrp.X...`` module a file imports (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hlrp."):
            found.add(node.module[len("hlrp.") :])
        elif isinstance(node, ast.Import):
            found |= {a.name[len("hlrp.") :] for a in node.names if a.name.startswith("hlrp.")}
    return found


def test_parts_import_only_what_they_may():
    bad = []
    for part, allowed in ALLOWED.items():
        for path in sorted((SRC / part).rglob("*.py")) if (SRC / part).is_dir() else []:
            for mod in hlrp_imports(path):
                if not any(mod == a or mod.startswith(a + ".") for a in allowed):
                    bad.append(f"{path.relative_to(SRC)} imports hlrp.{mod}")
    assert not bad, "\n".join(bad)


def test_the_rule_sees_a_violation(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def g():\n    from hlrp.laq.train import train\n")
    assert hlrp_imports(f) == {"laq.train"}
