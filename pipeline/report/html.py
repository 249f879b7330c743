"""`report.html`: one self-contained page (inline CSS, every PNG as a base64 data URI, no scripts or links)."""
from __future__ import annotations

import base64
from html import escape

from ..formats import SPLITS
from ..thresholds import DEFAULT_THRESHOLD
from .counts import format_ratio, split_counts, totals
from .plots import PLOTS
from .text import (METRIC_ROWS, SUMMARY_FILE, attack_rows, fmt, improvement, report_notes, report_title, setup_items,
                   threshold_heading, threshold_provenance)

HTML_FILE = "report.html"

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.4}
h1{border-bottom:2px solid #444;padding-bottom:.3em}h2{margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f0f0f0}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em 1em}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;font-size:.9em}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:.85em}
.up{color:#1a7f37}.down{color:#c62828}
"""


def _e(x) -> str:
    return escape(str(x), quote=True)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _results_table(rep: dict) -> str:
    d, t = rep["default"], rep["tuned"]
    rows = []
    for key, label in METRIC_ROWS:
        delta = t[key] - d[key]
        cls = "up" if delta > 1e-12 else "down" if delta < -1e-12 else ""
        rows.append([_e(label), f"{d[key]:.4f}", f"{t[key]:.4f}", f'<span class="{cls}">{delta:+.4f}</span>'])
    for m, name in ((d, "default"), (t, "tuned")):
        (tn, fp), (fn, tp) = m["confusion_matrix"]
        rows.append([_e(f"TN / FP / FN / TP ({name})"), "", "", _e(f"{tn} / {fp} / {fn} / {tp}")])
    table = _table(["Metric", f"threshold {d['threshold']:.4g}", f"tuned {t['threshold']:.4f}", "change"], rows)
    curve = _table(["AUC", "AP", "EER"], [[fmt(rep.get("auc")), fmt(rep.get("ap")), fmt(rep.get("eer"))]])
    return table + curve + _field_table(rep) + _attack_table(rep)


def _field_table(rep: dict) -> str:
    """ASVspoof 5's minDCF, actDCF, Cllr, the ECE and the video level; "" for a block without them."""
    if "min_dcf" not in rep:
        return ""
    dcf = rep.get("dcf") if isinstance(rep.get("dcf"), dict) else {}
    llr = rep.get("llr") if isinstance(rep.get("llr"), dict) else {}
    head = ["minDCF", "actDCF", "Cllr (bits)", f"ECE ({_e(rep.get('ece_bins'))} bins)"]
    cells = [fmt(rep.get(k)) for k in ("min_dcf", "act_dcf", "cllr", "ece")]
    source = f"logit(score) calibrated on {llr['fitted_on']}" if llr.get("fitted_on") else "logit(score)"
    parts = [f"<p>ASVspoof 5 costs: P_spoof {_e(dcf.get('p_spoof'))}, C_miss {_e(dcf.get('c_miss'))}, C_fa "
             f"{_e(dcf.get('c_fa'))}; LLR: {_e(source)}</p>", _table(head, [cells])]
    video = rep.get("video")
    if isinstance(video, dict):
        parts.append(_table(["Videos (mean frame score)", "AUC", "AP", "EER", "minDCF"],
                            [[_e(video.get("n"))] + [fmt(video.get(k)) for k in ("auc", "ap", "eer", "min_dcf")]]))
    return "".join(parts)


def _attack_table(rep: dict) -> str:
    rows = attack_rows(rep.get("by_attack"))
    if not rows:
        return ""
    t = rep["tuned"]["threshold"]
    body = [[_e(name), f"{r['n']:,}", fmt(r.get("auc")), fmt(r.get("eer")), fmt(r.get("recall"))] for name, r in rows]
    return ("<h3>Per attack</h3><p>All reals of the split against the fakes of each attack (AUC, EER); recall of "
            f"that attack's fakes at the tuned threshold {t:.4f}.</p>" +
            _table(["Attack", "n (fakes)", "AUC", "EER", f"Recall @ {t:.4f}"], body))


def _warnings(metrics: dict) -> list[str]:
    notes = report_notes(metrics)
    if not notes:
        return []
    return ['<div class="warn"><strong>Warnings</strong><ul>' + "".join(f"<li>{_e(n)}</li>" for n in notes) +
            "</ul></div>"]


def _setup(config: dict) -> list[str]:
    setup = setup_items(config)
    return ["<h2>Setup</h2>", _table(["Setting", "Value"], [[_e(k), _e(v)] for k, v in setup])] if setup else []


def _dataset(counts: dict[str, dict[str, int]]) -> list[str]:
    if not counts:
        return []
    rows = [[_e(n), f"{c['real']:,}", f"{c['fake']:,}", f"{c['real'] + c['fake']:,}",
             _e(format_ratio(c["real"], c["fake"]))] for n, c in counts.items()]
    real, fake = totals(counts)
    rows.append(["<strong>all</strong>", f"{real:,}", f"{fake:,}", f"{real + fake:,}", _e(format_ratio(real, fake))])
    return ["<h2>Dataset</h2>", _table(["Split", "Real", "Fake", "Total", "Imbalance ratio"], rows)]


def _shortcut_audit(config: dict) -> list[str]:
    from .text import audit_rows
    a, rows = audit_rows(config)
    if not rows:
        return []
    head = (f"<p>Train split, metadata only: combined AUC {_e(a.get('combined_auc'))}; flagged: "
            f"{_e(', '.join(a.get('flagged') or []) or 'none')}. <code>dfp audit SHARDS</code> gives the full table.</p>")
    return ["<h2>Shortcut audit</h2>", head,
            _table(["Feature", "AUC", "Remedy (flagged)"], [[_e(n), f"{auc:.2f}", _e(fix)] for n, auc, fix in rows])]


def _thresholds(metrics: dict) -> list[str]:
    chosen = metrics.get("chosen") or {}
    if not chosen:
        return []
    rows = [[_e(k), f"{v:.6f}", "&#10004; chosen" if k == chosen.get("method") else ""]
            for k, v in (metrics.get("thresholds") or {}).items()]
    title, source = threshold_heading(metrics)
    parts = [f"<h2>{_e(title)} ({_e(source)})</h2>",
             f"<p>Chosen: method <strong>{_e(chosen.get('method'))}</strong>, threshold "
             f"<strong>{float(chosen.get('threshold', DEFAULT_THRESHOLD)):.6f}</strong></p>"]
    parts += [f"<p>{_e(line)}</p>" for line in threshold_provenance(chosen, metrics.get("threshold_history"))]
    if chosen.get("fallback_reason"):
        parts.append(f'<p class="warn">Requested: method <strong>{_e(chosen.get("requested"))}</strong>, '
                     f"not applied: {_e(chosen['fallback_reason'])}</p>")
    if rows:
        parts.append(_table(["Method", "Threshold", ""], rows))
    return parts


def _results(metrics: dict) -> list[str]:
    parts = []
    for split in SPLITS:
        rep = metrics.get(split)
        if isinstance(rep, dict) and "default" in rep and "tuned" in rep:
            parts += [f"<h2>Results: {_e(split)}</h2>",
                      f"<p>F1 improvement, tuned vs 0.5: {_e(improvement(rep['default']['f1'], rep['tuned']['f1']))}</p>",
                      _results_table(rep)]
    return parts


def _plots(images: dict[str, bytes]) -> list[str]:
    if not images:
        return []
    parts = ["<h2>Plots</h2>"]
    for name in PLOTS:
        if name in images:
            b64 = base64.b64encode(images[name]).decode("ascii")
            parts.append(f'<figure><img alt="{_e(PLOTS[name])}" src="data:image/png;base64,{b64}">'
                         f"<figcaption>{_e(PLOTS[name])} ({_e(name)})</figcaption></figure>")
    return parts


def _threshold_note(metrics: dict) -> str:
    if isinstance(metrics.get("evaluation"), dict):
        return "The threshold is the checkpoint's, applied unchanged to the evaluated split."
    return "Thresholds are tuned on val only and applied unchanged to test."


def render_html(run_name: str, metrics: dict, config: dict, images: dict[str, bytes], summary: str) -> str:
    """One self-contained page: tables of the summary numbers and every PNG as a base64 data URI."""
    metrics = metrics or {}
    title = report_title(run_name, config or {})
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>dfp {_e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Deepfake detector {_e(title)}</h1>",
             "<p>Labels: real = 0, fake = 1; fake is the positive class (precision, recall and F1 are the fake "
             "class's). A sample is called fake when score &gt;= threshold. " + _threshold_note(metrics) + "</p>"]
    parts += _warnings(metrics) + _setup(config) + _dataset(split_counts(config, metrics))
    parts += _shortcut_audit(config or {})
    parts += _thresholds(metrics) + _results(metrics) + _plots(images)
    parts += [f"<h2>{_e(SUMMARY_FILE)}</h2>", f"<pre>{_e(summary)}</pre>", "</body></html>"]
    return "\n".join(parts) + "\n"
