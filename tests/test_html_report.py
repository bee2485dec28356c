"""report.html: one self-contained page, its best values marked by each metric's direction, all text escaped."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

from PIL import Image

from lficam.evaluation.html_report import checkpoint_report_html, metric_rows, stability_report_html


class Page(HTMLParser):
    """The table cells (text, class) row by row, and the src of every <img>."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.rows: list[list[tuple[str, str]]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None
        self._class = ""
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell, self._class = [], attrs.get("class") or ""
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(("".join(self._cell).strip(), self._class))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def decoded(src: str) -> tuple[int, int, int]:
    """The top-left pixel of an inline PNG, after checking it is one."""
    assert src.startswith("data:image/png;base64,")
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data)).getpixel((0, 0))


def fetches_nothing(html: str) -> bool:
    return not re.search(r"https?://|src=\"/|<link|<script", html)


def png(path, colour):
    Image.new("RGB", (8, 6), colour).save(path)
    return path


REPORT = {
    "checkpoint": "runs/<script>alert(1)</script>&co/last.ckpt",
    "test": {"test/acc": 0.8125},
    "protocol": {"protocol": "quick", "pixels_per_step": 64},
    "num_images": 6,
    "maps": {
        "own": {"pointing_game": 0.5, "deletion_auc": 0.30, "average_drop": float("nan")},
        "gradcam": {"pointing_game": 0.75, "deletion_auc": 0.20, "average_drop": 12.0},
        "scorecam": {"pointing_game": 0.75, "deletion_auc": 0.25, "average_drop": None},
    },
}


def by_metric(page: Page) -> dict[str, list[tuple[str, str]]]:
    return {row[0][0]: row[1:] for row in page.rows[1:]}


def test_each_row_marks_its_best_value_by_the_metrics_direction(tmp_path):
    page = Page(checkpoint_report_html(REPORT, {}))
    assert page.rows[0] == [("metric", ""), ("own", ""), ("gradcam", ""), ("scorecam", "")]
    rows = by_metric(page)
    # higher is better, and a tie marks both
    assert rows["pointing_game ↑"] == [("0.5000", ""), ("0.7500", "best"), ("0.7500", "best")]
    # lower is better: the minimum
    assert rows["deletion_auc ↓"] == [("0.3000", ""), ("0.2000", "best"), ("0.2500", "")]
    # NaN and null are a dash and never best; the one defined value is
    assert rows["average_drop ↓"] == [("–", ""), ("12.0000", "best"), ("–", "")]
    assert list(rows) == ["pointing_game ↑", "deletion_auc ↓", "average_drop ↓"]  # eval.py's order


def test_metric_rows_is_what_the_table_shows():
    rows = metric_rows(REPORT["maps"])
    assert [(m, b) for m, _, b in rows] == [
        ("pointing_game", {1, 2}),
        ("deletion_auc", {1}),
        ("average_drop", {1}),
    ]


def test_the_pictures_are_inline_and_nothing_is_fetched(tmp_path):
    pictures = {
        "curves": png(tmp_path / "c.png", (255, 0, 0)),
        "overlays": png(tmp_path / "o.png", (0, 0, 255)),
    }
    html = checkpoint_report_html(REPORT, pictures)
    page = Page(html)
    assert len(page.images) == 2
    assert [decoded(src) for src in page.images] == [(255, 0, 0), (0, 0, 255)]  # curves, then overlays
    assert fetches_nothing(html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;co" in html


def test_the_page_states_accuracy_protocol_and_fam_reference_escaped():
    report = {
        **REPORT,
        "fam_reference": 'class "cat" & <dog>',
        "maps": {'cam<b>&"x"': {"mask_iou": 0.5}, "own": {"mask_iou": float("nan")}},
    }
    html = checkpoint_report_html(report, {})
    assert "<p>Test: test/acc 0.8125</p>" in html
    assert "quick protocol on 6 test images, 64 pixels per deletion/insertion step" in html
    assert "FAM's reference: class &quot;cat&quot; &amp; &lt;dog&gt;" in html
    page = Page(html)
    # the parser reads the escaped name back as written, so the header is one cell, not a <b> tag
    assert page.rows[0] == [("metric", ""), ('cam<b>&"x"', ""), ("own", "")]
    assert page.rows[1] == [("mask_iou ↑", ""), ("0.5000", "best"), ("–", "")]
    assert "<b>" not in html
    assert "FAM's reference" not in checkpoint_report_html(REPORT, {})


def test_a_picture_that_was_not_written_leaves_no_image(tmp_path):
    html = checkpoint_report_html(REPORT, {"curves": tmp_path / "missing.png"})
    assert Page(html).images == []
    assert "Deletion and insertion" not in html


def test_the_stability_page_shows_groups_matrices_and_a_one_pair_std_as_a_dash(tmp_path):
    report = {
        "threshold": 0.392,
        "num_images": 16,
        "runs": [
            {"checkpoint": "a/last.ckpt", "attention": "lficam"},
            {"checkpoint": "b/last.ckpt", "attention": "lficam"},
        ],
        "iou_matrix": [[1.0, 0.625], [0.625, 1.0]],
        "spearman_matrix": [[1.0, 0.8], [0.8, None]],
        "by_attention": {
            "lficam": {
                "runs": 2,
                "pairs": 1,
                "iou_mean": 0.625,
                "iou_std": None,
                "spearman_mean": 0.8,
                "spearman_std": None,
            }
        },
    }
    html = stability_report_html(report, {"matrices": png(tmp_path / "s.png", (0, 255, 0))})
    page = Page(html)
    assert [c for c, _ in page.rows[1]] == ["lficam", "2", "1", "0.625 ± –", "0.800 ± –"]
    assert "one pair of runs has no spread" in html
    iou = [[c for c, _ in row] for row in page.rows[3:5]]
    assert iou == [
        ["0: lficam (a/last.ckpt)", "1.000", "0.625"],
        ["1: lficam (b/last.ckpt)", "0.625", "1.000"],
    ]
    assert [c for c, _ in page.rows[7]][-1] == "–"  # a null in the matrix
    assert [decoded(src) for src in page.images] == [(0, 255, 0)]
    assert fetches_nothing(html)
    assert "&gt; 0.392 of each map" in html


def test_the_stability_page_escapes_run_names_and_skips_an_absent_picture(tmp_path):
    report = {
        "threshold": 0.5,
        "num_images": 4,
        "runs": [{"checkpoint": "<script>x</script>", "attention": "a&b"}] * 2,
        "iou_matrix": [[1.0, 0.5], [0.5, 1.0]],
        "spearman_matrix": [[1.0, 0.25], [0.25, 1.0]],
        "by_attention": {
            "a&b": {
                "runs": 3,
                "pairs": 3,
                "iou_mean": 0.5,
                "iou_std": 0.125,
                "spearman_mean": 0.25,
                "spearman_std": 0.25,
            }
        },
    }
    html = stability_report_html(report, {"matrices": tmp_path / "missing.png"})
    page = Page(html)
    assert [c for c, _ in page.rows[1]] == ["a&b", "3", "3", "0.500 ± 0.125", "0.250 ± 0.250"]
    assert page.rows[3][0][0] == "0: a&b (<script>x</script>)"
    assert fetches_nothing(html)
    assert page.images == []
    assert "no spread" not in html  # every std is defined
