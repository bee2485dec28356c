"""``report.html`` beside eval.py's metrics.json and stability.json: one page that opens from a file anywhere.

Self-contained on purpose: the pictures are inline (``data:image/png;base64``), the style is inline, and
nothing is fetched (no script, font or stylesheet from a network), so the page can be mailed, archived with
the run, or opened on a cluster's login node. Every text is HTML-escaped: a path or class name holding ``<``
or ``&`` cannot break the page. The numbers are those of metrics.json; which way is better comes from
:data:`lficam.evaluation.scores.HIGHER_IS_BETTER`, the one definition the tables of eval.py and the study use.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable
from html import escape
from pathlib import Path
from typing import Any

from lficam.evaluation.scores import HIGHER_IS_BETTER, METRICS, arrow

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.3em; word-break: break-all; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; } caption { text-align: left; color: #555; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.best { font-weight: bold; background: #e3f2e1; } .note { color: #555; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #eee; }
"""
DASH = "–"


def _number(value: Any) -> float | None:
    """A finite float, or None for a missing, null or NaN value (shown as a dash, never marked best)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _picture(path: Path | None, alt: str) -> str:
    """An inline PNG, or nothing when the file was not written (e.g. faithfulness off)."""
    if path is None or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<p><img src="data:image/png;base64,{data}" alt="{escape(alt)}"></p>'


def _page(title: str, body: Iterable[str]) -> str:
    """A whole document around ``body``; the style is inline so that the file needs nothing beside it."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def metric_rows(maps: dict[str, dict[str, Any]]) -> list[tuple[str, list[float | None], set[int]]]:
    """(metric, each method's value, the columns holding the row's best value) for every metric some
    method has, in the order of eval.py's tables; ties are all best, and a row with one defined value still
    marks it."""
    methods = list(maps)
    rows = []
    for metric in [m for m in METRICS if any(m in maps[k] for k in methods)]:
        values = [_number(maps[k].get(metric)) for k in methods]
        defined = [v for v in values if v is not None]
        best: set[int] = set()
        if defined:
            target = max(defined) if HIGHER_IS_BETTER[metric] else min(defined)
            best = {i for i, v in enumerate(values) if v is not None and v == target}
        rows.append((metric, values, best))
    return rows


def _metrics_table(maps: dict[str, dict[str, Any]]) -> str:
    methods = list(maps)
    head = "".join(f"<th>{escape(m)}</th>" for m in methods)
    lines = [
        "<table><caption>best value of each row in bold; ↑ higher is better, ↓ lower is better</caption>",
        f"<tr><th>metric</th>{head}</tr>",
    ]
    for metric, values, best in metric_rows(maps):
        cells = "".join(
            f'<td class="best">{v:.4f}</td>' if i in best else f"<td>{DASH if v is None else f'{v:.4f}'}</td>"
            for i, v in enumerate(values)
        )
        lines.append(f"<tr><td>{escape(metric)} {arrow(metric)}</td>{cells}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def checkpoint_report_html(report: dict[str, Any], pictures: dict[str, Path]) -> str:
    """The page of ``eval.py ckpt_path=…``: test accuracy, the protocol, FAM's reference, the metrics table,
    the deletion/insertion curves (``pictures["curves"]``) and the overlay grid (``pictures["overlays"]``)."""
    title = f"lficam evaluation of {report.get('checkpoint', '')}"
    test = ", ".join(
        f"{escape(str(k))} {v:.4f}" for k, v in (report.get("test") or {}).items() if _number(v) is not None
    )
    protocol = report.get("protocol") or {}
    name, images = protocol.get("protocol", ""), report.get("num_images", DASH)
    step = protocol.get("pixels_per_step", DASH)
    body = [
        f"<h1>{escape(title)}</h1>",
        f"<p>Test: {test or DASH}</p>",
        f'<p class="note">{escape(str(name))} protocol on {escape(str(images))} test images, '
        f"{escape(str(step))} pixels per deletion/insertion step</p>",
    ]
    if report.get("fam_reference"):
        body.append(f"<p>FAM's reference: {escape(str(report['fam_reference']))}</p>")
    body += ["<h2>Attention quality</h2>", _metrics_table(report.get("maps") or {})]
    curves = _picture(pictures.get("curves"), "deletion and insertion curves")
    if curves:
        body += ["<h2>Deletion and insertion</h2>", curves]
    overlays = _picture(pictures.get("overlays"), "each method's maps over the first test images")
    if overlays:
        body += ["<h2>Maps</h2>", overlays]
    return _page(title, body)


def _matrix(name: str, matrix: list[list[Any]], labels: list[str]) -> str:
    head = "".join(f"<th>{escape(label)}</th>" for label in labels)
    rows = [f"<table><caption>{escape(name)}</caption><tr><th></th>{head}</tr>"]
    for label, row in zip(labels, matrix):
        cells = "".join(f"<td>{DASH if _number(v) is None else f'{v:.3f}'}</td>" for v in row)
        rows.append(f"<tr><td>{escape(label)}</td>{cells}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _mean_std(mean: Any, std: Any) -> str:
    m, s = _number(mean), _number(std)
    if m is None:
        return DASH
    return f"{m:.3f} ± {DASH if s is None else f'{s:.3f}'}"


def stability_report_html(report: dict[str, Any], pictures: dict[str, Path]) -> str:
    """The page of ``eval.py stability.runs=…``: each attention kind's IoU and Spearman mean ± std over its
    pairs of runs, the pairwise matrices, and ``pictures["matrices"]`` (stability.png)."""
    runs = report.get("runs") or []
    labels = [f"{i}: {r.get('attention')} ({r.get('checkpoint')})" for i, r in enumerate(runs)]
    title = f"lficam cross-run stability of {len(runs)} runs"
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="note">own maps of {escape(str(report.get("num_images", DASH)))} test images, paired by '
        f"image id; IoU at &gt; {escape(str(report.get('threshold', '')))} of each map's range "
        "(method.md §1.5)</p>",
        "<table><tr><th>attention</th><th>runs</th><th>pairs</th><th>IoU mean ± std</th>"
        "<th>Spearman mean ± std</th></tr>",
    ]
    one_pair = False
    for kind, group in (report.get("by_attention") or {}).items():
        one_pair |= _number(group.get("iou_std")) is None
        body.append(
            f"<tr><td>{escape(str(kind))}</td><td>{escape(str(group.get('runs')))}</td>"
            f"<td>{escape(str(group.get('pairs')))}</td>"
            f"<td>{_mean_std(group.get('iou_mean'), group.get('iou_std'))}</td>"
            f"<td>{_mean_std(group.get('spearman_mean'), group.get('spearman_std'))}</td></tr>"
        )
    body.append("</table>")
    if one_pair:
        body.append(f'<p class="note">{DASH} for a std: one pair of runs has no spread.</p>')
    body += [
        "<h2>Every pair of runs</h2>",
        _matrix("mean IoU", report.get("iou_matrix") or [], labels),
        _matrix("mean Spearman's ρ", report.get("spearman_matrix") or [], labels),
        _picture(pictures.get("matrices"), "the pairwise IoU and Spearman matrices"),
    ]
    return _page(title, body)


def write_report(path: Path, html: str) -> Path:
    """Write ``html`` to ``path`` as UTF-8: the page declares that charset, and its arrows need it."""
    path = Path(path)
    path.write_text(html, encoding="utf-8")
    return path
