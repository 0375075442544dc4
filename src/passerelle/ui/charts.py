"""The console's own two drawings: the traffic split and the lineage graph, as inline SVG.

Every other chart comes from :mod:`passerelle.report`, so the console and the HTML report
draw drift, distributions and performance with the same code. These two exist only here.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

# The report's version palette, in the same order, so a version keeps its colour across charts.
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _svg(width: int, height: int, title: str, body: Sequence[str], cls: str) -> str:
    return (
        f'<svg class="{cls}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>{"".join(body)}</svg>'
    )


def colours(refs: Sequence[str]) -> dict[str, str]:
    return {ref: _COLOURS[i % len(_COLOURS)] for i, ref in enumerate(refs)}


def split_bar(policy: Sequence[tuple[str, float]], live: Sequence[tuple[str, float]]) -> str:
    """Two stacked bars: the weights the policy asks for, and the shares traffic really took.

    ``live`` shares are fractions of the requests seen recently; an empty ``live`` draws the
    second bar as "no traffic". Each segment carries its version and figure in words, in a
    tooltip and on the bar when it is wide enough.
    """
    refs = list(dict.fromkeys([ref for ref, _ in policy] + [ref for ref, _ in live]))
    palette = colours(refs)
    width, left, right, row = 760, 120, 10, 26
    inner = width - left - right
    body: list[str] = []

    def bar(y: int, label: str, parts: Sequence[tuple[str, float]], what: str) -> None:
        body.append(f'<text x="{left - 8}" y="{y + 17}" text-anchor="end" class="label">{_e(label)}</text>')
        total = sum(share for _, share in parts)
        if total <= 0:
            body.append(
                f'<rect x="{left}" y="{y}" width="{inner}" height="{row - 4}" class="lane"/>'
                f'<text x="{left + 8}" y="{y + 17}">{_e(what)}: no traffic recently</text>'
            )
            return
        x = float(left)
        for ref, share in parts:
            w = inner * share / total
            if w <= 0:
                continue
            percent = 100 * share / total
            body.append(
                f'<rect class="segment" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 4}" '
                f'fill="{palette[ref]}" stroke="#fff" data-ref="{_e(ref)}" data-share="{percent:.1f}">'
                f"<title>{_e(ref)}: {percent:.1f}% {_e(what)}</title></rect>"
            )
            if w > 90:
                body.append(
                    f'<text x="{x + 6:.1f}" y="{y + 16}" class="on-bar">{_e(ref)} {percent:.0f}%</text>'
                )
            x += w

    bar(4, "policy", [(ref, weight) for ref, weight in policy], "of the traffic by policy")
    bar(4 + row + 6, "last 5 minutes", [(ref, share) for ref, share in live], "of the requests served")
    height = 4 + 2 * row + 12
    return _svg(
        width, height, "Traffic split: the policy's weights and the traffic really served", body, "split"
    )


def lineage_graph(
    *, datasets: Sequence[str], runs: Sequence[str], version: str, endpoints: Sequence[str]
) -> str:
    """dataset → pipeline run → version → endpoints, as columns of boxes joined by arrows."""
    columns = [
        ("dataset", list(datasets) or ["(none recorded)"]),
        ("pipeline run", list(runs) or ["(registered by hand)"]),
        ("version", [version]),
        ("endpoints", list(endpoints) or ["(not served)"]),
    ]
    box_w, box_h, gap_x, gap_y, top = 170, 30, 50, 12, 24
    rows = max(len(items) for _, items in columns)
    height = top + rows * (box_h + gap_y) + 4
    width = len(columns) * box_w + (len(columns) - 1) * gap_x + 2
    body = [
        '<defs><marker id="lineage-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0 0L10 5L0 10z" fill="#555"/></marker></defs>'
    ]
    centres: list[list[float]] = []
    for index, (heading, items) in enumerate(columns):
        x = 1 + index * (box_w + gap_x)
        body.append(
            f'<text x="{x + box_w / 2:.1f}" y="14" text-anchor="middle" class="label">{_e(heading)}</text>'
        )
        ys: list[float] = []
        for row_index, item in enumerate(items):
            y = top + row_index * (box_h + gap_y)
            missing = item.startswith("(")
            text = item if len(item) <= 24 else item[:23] + "…"
            body.append(
                f'<g class="node{" missing" if missing else ""}"><title>{_e(heading)}: {_e(item)}</title>'
                f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="4"/>'
                f'<text x="{x + box_w / 2:.1f}" y="{y + 19}" text-anchor="middle">{_e(text)}</text></g>'
            )
            ys.append(y + box_h / 2)
        centres.append(ys)
    for index in range(len(columns) - 1):
        x1 = 1 + index * (box_w + gap_x) + box_w
        x2 = x1 + gap_x
        for y1 in centres[index]:
            for y2 in centres[index + 1]:
                body.append(
                    f'<line class="edge" x1="{x1}" y1="{y1:.1f}" x2="{x2 - 2}" y2="{y2:.1f}" '
                    'marker-end="url(#lineage-arrow)"/>'
                )
    return _svg(width, height, f"Lineage of {version}: dataset, run, version, endpoints", body, "lineage")
