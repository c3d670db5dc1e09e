"""Label placement for the leaderboard scatter: no two labels overlap, none covers a marker.

Each point gets a short label (its number in the plot's key). Candidate boxes are tried around the
point, nearest first (eight directions at growing distances); the first box inside the plot area
that overlaps neither a placed label nor any point's marker is taken. A label placed away from its
point gets a leader line (the caller draws it from the returned box). Deterministic: points are
placed in the order given.
"""

from __future__ import annotations

from dataclasses import dataclass

#: width of one character of the label font (11 px system-ui digits), and the label height (a
#: rendered 11-px label is 13 px high; its baseline is 11.5 px below the box top)
CHAR_W, LABEL_H = 7.0, 15.0
#: half-size of a marker's box (markers are drawn with radius 5; a pixel of margin)
MARKER_HALF = 6.0
#: distances (px, from the point to the nearest edge of the label) tried in turn
RINGS = (3.0, 8.0, 14.0, 22.0, 32.0, 46.0, 64.0, 90.0, 128.0, 180.0, 256.0)


@dataclass(frozen=True)
class Box:
    """An axis-aligned box: left, top, width, height (SVG pixels, y down)."""

    x: float
    y: float
    w: float
    h: float

    def overlaps(self, other: Box) -> bool:
        return (
            self.x < other.x + other.w
            and other.x < self.x + self.w
            and self.y < other.y + other.h
            and other.y < self.y + self.h
        )

    def inside(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        return self.x >= x0 and self.y >= y0 and self.x + self.w <= x1 and self.y + self.h <= y1

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2


def label_size(text: str) -> tuple[float, float]:
    """The box a label of ``text`` takes (width, height)."""
    return CHAR_W * len(text) + 2.0, LABEL_H


def _candidates(cx: float, cy: float, w: float, h: float) -> list[Box]:
    out = []
    for d in RINGS:
        r = MARKER_HALF + d
        out += [
            Box(cx + r, cy - h / 2, w, h),  # right
            Box(cx - r - w, cy - h / 2, w, h),  # left
            Box(cx - w / 2, cy - r - h, w, h),  # above
            Box(cx - w / 2, cy + r, w, h),  # below
            Box(cx + r * 0.7, cy - r * 0.7 - h, w, h),  # above right
            Box(cx - r * 0.7 - w, cy - r * 0.7 - h, w, h),  # above left
            Box(cx + r * 0.7, cy + r * 0.7, w, h),  # below right
            Box(cx - r * 0.7 - w, cy + r * 0.7, w, h),  # below left
        ]
    return out


def place_labels(
    points: list[tuple[float, float]],
    texts: list[str],
    area: tuple[float, float, float, float],
) -> list[Box]:
    """One label box per point, none overlapping another or any marker, inside ``area``
    (x0, y0, x1, y1) where a free place exists (else the nearest box inside the area)."""
    markers = [
        Box(x - MARKER_HALF, y - MARKER_HALF, 2 * MARKER_HALF, 2 * MARKER_HALF) for x, y in points
    ]
    placed: list[Box] = []
    for (cx, cy), text in zip(points, texts, strict=True):
        w, h = label_size(text)
        cands = _candidates(cx, cy, w, h)
        inside = [b for b in cands if b.inside(*area)] or cands
        choice = next(
            (
                b
                for b in inside
                if not any(b.overlaps(o) for o in placed)
                and not any(b.overlaps(m) for m in markers)
            ),
            inside[0],
        )
        placed.append(choice)
    return placed
