"""The gate the LAQ report puts before stage 2 (latent-action labelling).

:func:`gate_checks` turns a report (the dict ``hlrp.laq.report`` writes to ``report.json``)
into one verdict per check, each with its own threshold (a field of :class:`LAQReportConfig`);
a value must reach its threshold:

* ``min_perplexity``: ``codebook.perplexity`` (codes collapsed); not measured: fails.
* ``min_used_fraction``: ``codebook.used_fraction`` (a dead codebook); not measured: fails.
* ``min_sequence_perplexity``: ``codebook.sequence_perplexity`` (whole code sequences
  collapsed, LAPA's "[2,0,0,0] always"); a report without it: not applicable.
* ``min_psnr_drop_db``: ``code_shuffle.psnr_drop_db`` (the decoder ignores the codes); not
  measured: fails.
* ``min_probe_r2``: ``actions.probe.r2.codes``, the held-out R² of the linear probe from the
  codes to the ground-truth actions. Threshold None: not gated. Without actions (or without
  held-out videos to score on): not applicable, which does not fail the gate.
* ``min_probe_margin``: the low end of ``actions.probe.margin.pixels.ci95``, the paired 95 %
  interval of the codes probe's held-out R² minus that of the probe from frame t alone
  (floored at 0, so collapsed codes cannot pass by beating an overfitted frame probe): the
  codes must say more about the action than the scene does. Not gated / not applicable as
  ``min_probe_r2``.

:func:`check_gate` lists the failed checks' messages (empty: passed); :func:`check_report_gate`
is what labelling runs on a ``report.json`` file before it starts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hlrp.common.config import LAQReportConfig
from hlrp.common.io import file_sha256
from hlrp.common.logging import get_logger
from hlrp.common.metrics import finite

__all__ = [
    "GateCheck",
    "GateFailed",
    "check_gate",
    "check_report_gate",
    "gate_checks",
    "gate_thresholds",
]

log = get_logger("laq.gate")

PASS, FAIL, NOT_APPLICABLE, NOT_GATED = "pass", "fail", "not applicable", "not gated"


class GateFailed(RuntimeError):
    """The LAQ report's gate failed; the message lists why."""


@dataclass
class GateCheck:
    """One gate check's verdict on a report."""

    key: str  # the threshold's name in LAQReportConfig / gate.thresholds
    label: str  # what is measured, for people
    value: float | None  # the measured value (None: not measured)
    threshold: float | None  # the value must reach it (None: not gated)
    status: str  # "pass", "fail", "not applicable" or "not gated"
    message: str  # why it failed / why it does not apply ("" when it passed)


def gate_thresholds(cfg: LAQReportConfig) -> dict[str, float | None]:
    """Every gated check's threshold, by name (None: the check is not gated)."""
    return {
        "min_perplexity": cfg.min_perplexity,
        "min_used_fraction": cfg.min_used_fraction,
        "min_sequence_perplexity": cfg.min_sequence_perplexity,
        "min_psnr_drop_db": cfg.min_psnr_drop_db,
        "min_probe_r2": cfg.min_probe_r2,
        "min_probe_margin": cfg.min_probe_margin,
    }


def gate_checks(report: dict, cfg: LAQReportConfig) -> list[GateCheck]:
    """Every gate check's verdict on ``report`` (see the module docstring for the table)."""
    cb = report.get("codebook") or {}
    sh = report.get("code_shuffle") or {}
    act = report.get("actions") or {}
    n = (report.get("data") or {}).get("pairs", "?")
    size = cb.get("size", "?")
    checks: list[GateCheck] = []

    def add(key: str, label: str, value: Any, threshold: float | None, message: str) -> None:
        v = finite(value)
        if threshold is None:
            checks.append(GateCheck(key, label, v, None, NOT_GATED, ""))
        elif v is not None and v >= threshold:
            checks.append(GateCheck(key, label, v, threshold, PASS, ""))
        else:
            checks.append(GateCheck(key, label, v, threshold, FAIL, message))

    ppl = finite(cb.get("perplexity"))
    if ppl is None:
        msg = "codes collapsed: code perplexity was not measured (no pairs evaluated?)"
    else:
        share = finite(cb.get("most_common_code_fraction"))
        extra = (
            f"; code {cb.get('most_common_code')} is {share:.0%} of all codes"
            if share is not None
            else ""
        )
        msg = (
            f"codes collapsed: perplexity {ppl:.3f} < {cfg.min_perplexity} over {n} pairs "
            f"(codebook of {size}{extra})"
        )
    add("min_perplexity", "code perplexity", ppl, cfg.min_perplexity, msg)

    used = finite(cb.get("used_fraction"))
    if used is None:
        msg = "codes collapsed: codebook use was not measured (no pairs evaluated?)"
    else:
        msg = (
            f"codes collapsed: only {cb.get('used_codes', '?')} of {size} codes used "
            f"(fraction {used:.3f} < {cfg.min_used_fraction}); dead codes {cb.get('dead_codes')}"
        )
    add("min_used_fraction", "codebook used fraction", used, cfg.min_used_fraction, msg)

    seq_ppl = finite(cb.get("sequence_perplexity"))
    label = "code sequence perplexity"
    if seq_ppl is None:  # reports written before sequences were counted
        checks.append(
            GateCheck(
                "min_sequence_perplexity",
                label,
                None,
                cfg.min_sequence_perplexity,
                NOT_APPLICABLE,
                "the report has no code sequence perplexity",
            )
        )
    else:
        top = (cb.get("top_sequences") or [{}])[0]
        share = finite(top.get("fraction"))
        extra = f"; {top.get('codes')} is {share:.0%} of all pairs" if share is not None else ""
        msg = (
            f"code sequences collapsed: sequence perplexity {seq_ppl:.3f} < "
            f"{cfg.min_sequence_perplexity}{extra} (a VLA would learn to predict it always)"
        )
        add("min_sequence_perplexity", label, seq_ppl, cfg.min_sequence_perplexity, msg)

    drop = finite(sh.get("psnr_drop_db"))
    if drop is None:
        msg = (
            "the codes carry almost nothing: the shuffled-codes PSNR drop was not measured "
            "(fewer than 2 pairs?)"
        )
    else:
        msg = (
            f"the codes carry almost nothing: decoding with another pair's codes costs only "
            f"{drop:.3f} dB PSNR (< {cfg.min_psnr_drop_db} dB); the decoder predicts frame t+k "
            f"from frame t alone"
        )
    add(
        "min_psnr_drop_db",
        "PSNR drop with another pair's codes (dB)",
        drop,
        cfg.min_psnr_drop_db,
        msg,
    )

    probe = act.get("probe") or {}
    probes_ran = probe.get("applicable", act.get("available"))
    why_not = str(probe.get("note") or act.get("note") or "no ground-truth actions")

    def add_probe(key: str, label: str, value: float | None, threshold: float | None, msg: str):
        """A probe check: not applicable (which does not fail) where the probes did not run."""
        if threshold is not None and not probes_ran:
            checks.append(GateCheck(key, label, value, threshold, NOT_APPLICABLE, why_not))
        else:
            add(key, label, value, threshold, msg)

    r2 = finite((probe.get("r2") or {}).get("codes"))
    if r2 is None:
        msg = "the codes do not predict the actions: the probe R² was not measured"
    else:
        ci = probe.get("r2_ci95", {}).get("codes") or [None, None]
        lo, hi = finite(ci[0]), finite(ci[1])
        interval = f", 95% interval [{lo:.3f}, {hi:.3f}]" if None not in (lo, hi) else ""
        msg = (
            f"the codes do not predict the actions: held-out probe R² {r2:.3f}{interval} "
            f"< {cfg.min_probe_r2}"
        )
    add_probe(
        "min_probe_r2", "held-out R² of the codes -> actions probe", r2, cfg.min_probe_r2, msg
    )

    margin = (probe.get("margin") or {}).get("pixels") or {}
    lo, hi = (list(margin.get("ci95") or []) + [None, None])[:2]
    lo, hi, point = finite(lo), finite(hi), finite(margin.get("margin"))
    if lo is None or hi is None or point is None:
        msg = (
            "the codes do not beat frame t alone: the paired interval of the probe margin "
            "was not measured (no action dim scored by both probes?)"
        )
    else:
        msg = (
            f"the codes do not beat frame t alone: held-out R² margin {point:+.3f}, 95% "
            f"interval [{lo:+.3f}, {hi:+.3f}], low end < {cfg.min_probe_margin}; the codes "
            "say little about the action that the scene does not"
        )
    label = "held-out R² of codes minus frame t alone (95% low end)"
    add_probe("min_probe_margin", label, lo, cfg.min_probe_margin, msg)
    return checks


def check_gate(report: dict, cfg: LAQReportConfig) -> list[str]:
    """The gate checks ``report`` fails, as one-line messages (empty: passed)."""
    return [c.message for c in gate_checks(report, cfg) if c.status == FAIL]


def gate_section(report: dict, cfg: LAQReportConfig) -> dict[str, Any]:
    """``report["gate"]``: ``passed``, ``failures``, ``thresholds`` and every check's verdict."""
    checks = gate_checks(report, cfg)
    failures = [c.message for c in checks if c.status == FAIL]
    return {
        "passed": not failures,
        "failures": failures,
        "thresholds": gate_thresholds(cfg),
        "checks": [asdict(c) for c in checks],
    }


def check_report_gate(
    report_path: str | os.PathLike, allow_failed: bool, laq_path: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Load the LAQ report and refuse to go on when its gate failed (unless allowed).

    With ``laq_path``, the report must be about that very checkpoint (same file hash): a report
    left over from other weights is treated as a failed gate.
    """
    path = Path(report_path)
    if not path.is_file():
        raise FileNotFoundError(f"LAQ report {path} does not exist (run the laq_report stage)")
    report = json.loads(path.read_text())
    gate = report.get("gate", {})
    failures = list(gate.get("failures") or [])
    if laq_path is not None and report.get("laq_sha256") != file_sha256(laq_path):
        failures.append(f"the report is about other LAQ weights than {laq_path} (stale report)")
    elif gate.get("passed", False):
        return report
    failures = failures or ["the report has no passing gate"]
    text = "; ".join(failures)
    if allow_failed:
        log.warning("LAQ gate FAILED (%s) - labelling anyway: label.allow_failed_gate=true", text)
        return report
    raise GateFailed(
        f"LAQ gate failed ({path}): {text}. Stage 2 would learn from these codes; fix LAQ "
        "training, or label anyway with label.allow_failed_gate=true"
    )
