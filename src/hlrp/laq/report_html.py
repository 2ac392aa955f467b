"""The LAQ report as one static HTML page (``report.html``), from a Jinja2 template.

The template is ``templates/report.html.j2`` (package data). :func:`summary_rows` builds the
table: first EVERY gate check of ``report["gate"]["checks"]`` with its own threshold (also the
ones that are not gated or not applicable), then reconstruction, codebook, action-probe and data
rows. Values are plain text: the template escapes them.
"""

from __future__ import annotations

from typing import Any

import jinja2
import numpy as np

from hlrp.common.metrics import finite

__all__ = ["fmt", "render_html", "summary_rows"]

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("hlrp.laq", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html", "j2")),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

PROBE_LABELS = {
    "codes": "one-hot codes",
    "z_pre": "z_pre (before quantization)",
    "pixels": "frame t alone (pooled pixels)",
    "pixel_diff": "frame t+k - frame t (pooled pixels)",
}


def fmt(v: Any, digits: int = 3) -> str:
    """A value as text for the table and the log ("n/a" for missing or non-finite numbers)."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return str(int(v))
    x = finite(v)
    if x is None:
        return "n/a" if isinstance(v, float | np.floating) else str(v)
    return f"{x:.{digits}f}"


def _row(section: str, name: str, value: str, ref: str = "", status: str = "", check=None):
    return {
        "section": section,
        "name": name,
        "value": value,
        "reference": ref,
        "status": status,
        "check": check,
    }


def _gate_rows(report: dict) -> list[dict[str, Any]]:
    rows = []
    for c in report["gate"].get("checks", []):
        th = c["threshold"]
        ref = "not gated" if th is None else f"≥ {th}"
        status = {"pass": "pass", "fail": "fail", "not applicable": "na"}.get(c["status"], "")
        if c["status"] == "not applicable":
            ref += f" (not applicable: {c['message']})"
        rows.append(_row("gate", c["label"], fmt(c["value"]), ref, status, c["key"]))
    return rows


def summary_rows(report: dict) -> list[dict[str, Any]]:
    """The summary table: dicts with section, name, value, reference, status, check (gate key)."""
    cb = report.get("codebook", {})
    rec = report.get("reconstruction", {})
    sh = report.get("code_shuffle", {})
    act = report.get("actions", {})
    data = report.get("data", {})
    rows = _gate_rows(report)
    gain = finite(rec.get("psnr_gain_db"))
    rows += [
        _row("reconstruction", "PSNR of frame t+k, LAQ (dB)", fmt(rec.get("psnr_db"))),
        _row("reconstruction", "PSNR, copy frame t baseline (dB)", fmt(rec.get("psnr_copy_db"))),
        _row(
            "reconstruction",
            "LAQ - copy baseline (dB)",
            fmt(rec.get("psnr_gain_db")),
            "> 0",
            "warn" if gain is None or gain <= 0 else "pass",
        ),
        _row(
            "reconstruction",
            "PSNR with another pair's codes (dB)",
            fmt(sh.get("psnr_shuffled_db")),
        ),
        _row(
            "reconstruction",
            "pairs decoded worse with other codes",
            fmt(sh.get("fraction_pairs_worse")),
        ),
        _row("codebook", "codes used", f"{fmt(cb.get('used_codes'))} / {fmt(cb.get('size'))}"),
        _row("codebook", "dead codes", str(cb.get("dead_codes", "n/a"))),
        _row(
            "codebook",
            "most frequent code (share)",
            f"{fmt(cb.get('most_common_code'))} ({fmt(cb.get('most_common_code_fraction'))})",
        ),
        _row(
            "codebook",
            "distinct code sequences",
            f"{fmt(cb.get('distinct_sequences'))} / {fmt(cb.get('possible_sequences'))}",
        ),
    ]
    top = cb.get("top_sequences") or []
    if top:
        rows.append(
            _row(
                "codebook",
                "most frequent sequence (share)",
                f"{top[0]['codes']} ({fmt(top[0]['fraction'])})",
                "",
                "warn" if top[0]["fraction"] > 0.5 else "",
            )
        )
    probe = act.get("probe") or {}
    if act.get("available") and probe.get("applicable"):
        r2, ci = probe["r2"], probe.get("r2_ci95", {})
        codes, pix = finite(r2.get("codes")), finite(r2.get("pixels"))
        for name, label in PROBE_LABELS.items():
            lo, hi = (ci.get(name) or [None, None])[:2]
            interval = f" [{fmt(lo)}, {fmt(hi)}]" if lo is not None and hi is not None else ""
            ref, status = "", ""
            if name == "codes":
                ref = "> 0 and > frame-t-only R²"
                ok = codes is not None and pix is not None and codes > max(pix, 0.0)
                status = "pass" if ok else "warn"
            rows.append(
                _row(
                    "actions",
                    f"held-out probe R², {label}",
                    fmt(r2.get(name)) + interval,
                    ref,
                    status,
                )
            )
        for base, label in (("pixels", "frame t alone"), ("pixel_diff", "pixel difference")):
            m = (probe.get("margin") or {}).get(base) or {}
            lo, hi = (list(m.get("ci95") or []) + [None, None])[:2]
            interval = f" [{fmt(lo)}, {fmt(hi)}]" if lo is not None and hi is not None else ""
            ref = status = ""
            if base == "pixels":
                ref = "95% interval above 0"
                status = "pass" if finite(lo) is not None and lo > 0 else "warn"
            rows.append(
                _row(
                    "actions",
                    f"held-out R² margin, codes minus {label} (paired)",
                    fmt(m.get("margin")) + interval,
                    ref,
                    status,
                )
            )
        rows.append(
            _row(
                "actions",
                "probe pairs: training / held-out (videos)",
                f"{fmt(probe.get('train_pairs'))} ({fmt(probe.get('train_videos'))}) / "
                f"{fmt(probe.get('heldout_pairs'))} ({fmt(probe.get('heldout_videos'))})",
            )
        )
    elif act.get("available"):
        rows.append(_row("actions", "action probes", str(probe.get("note", "n/a"))))
    if act.get("available"):
        nm = act.get("nmi", {})
        n_v, n_c = finite(nm.get("nmi")), finite(nm.get("nmi_chance"))
        rows += [
            _row(
                "actions",
                "NMI(code sequence, action terciles)",
                fmt(nm.get("nmi")),
                f"chance {fmt(nm.get('nmi_chance'))}",
                "pass" if n_v is not None and n_c is not None and n_v > n_c else "warn",
            ),
            _row(
                "actions",
                "NMI per action dim (mean)",
                fmt(nm.get("nmi_per_dim_mean")),
                f"chance {fmt(nm.get('nmi_per_dim_chance'))}",
            ),
        ]
    else:
        rows.append(_row("actions", "ground-truth actions", str(act.get("note", "n/a"))))
    heldout = data.get("heldout")
    rows += [
        _row(
            "data",
            "held-out clips",
            "yes" if heldout else "NO (all clips)",
            "",
            "" if heldout else "warn",
        ),
        _row("data", "clips / pairs", f"{fmt(data.get('clips'))} / {fmt(data.get('pairs'))}"),
        _row(
            "data",
            "probe-training clips / pairs",
            f"{fmt(data.get('train_clips'))} / {fmt(data.get('train_pairs'))}",
        ),
        _row("data", "offsets k", str(data.get("offsets"))),
    ]
    return rows


def render_html(report: dict) -> str:
    """The report as one static HTML page (inline CSS, figures as relative <img> links)."""
    sections: list[dict[str, Any]] = []
    for row in summary_rows(report):
        if not sections or sections[-1]["name"] != row["section"]:
            sections.append({"name": row["section"], "rows": []})
        sections[-1]["rows"].append(row)
    return _ENV.get_template("report.html.j2").render(
        passed=bool(report["gate"]["passed"]),
        failures=report["gate"]["failures"],
        warnings=report.get("warnings", []),
        sections=sections,
        figures=report.get("figures", {}),
        meta={
            "checkpoint": str(report.get("laq_checkpoint")),
            "config_hash": str(report.get("config_hash")),
            "global_step": str(report.get("global_step")),
            "device": str(report.get("device")),
            "seconds": str(report.get("seconds")),
        },
    )
