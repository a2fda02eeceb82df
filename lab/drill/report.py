"""A drill's report: ``report.json``, ``report.html`` and ``timeline.png``.

The PNG is drawn here with zlib and nothing else (no plotting library on a lab machine):
top, agents ready per site over time, with the faults as grey bars; bottom, the histogram
of per-agent recovery times. The HTML page carries the numbers, the axes' meaning and the
picture.
"""

from __future__ import annotations

import html
import json
import struct
import zlib
from pathlib import Path
from typing import Any

W, H = 900, 420
TOP = (20, 20, 880, 250)  # x0, y0, x1, y1 of the timeline
BOTTOM = (20, 290, 880, 400)  # of the histogram
COLORS = {"a": (31, 119, 180), "b": (44, 160, 44), "fault": (200, 200, 200), "axis": (0, 0, 0),
          "hist": (214, 39, 40)}


class Canvas:
    def __init__(self, w: int, h: int) -> None:
        self.w, self.h = w, h
        self.px = bytearray(b"\xff" * (w * h * 3))

    def dot(self, x: int, y: int, c: tuple[int, int, int]) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i:i + 3] = bytes(c)

    def rect(self, x0: int, y0: int, x1: int, y1: int, c: tuple[int, int, int]) -> None:
        for y in range(max(0, min(y0, y1)), min(self.h, max(y0, y1) + 1)):
            for x in range(max(0, min(x0, x1)), min(self.w, max(x0, x1) + 1)):
                self.dot(x, y, c)

    def line(self, x0: int, y0: int, x1: int, y1: int, c: tuple[int, int, int]) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.dot(x0, y0, c)
            self.dot(x0, y0 + 1, c)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3]) for y in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def timeline_png(report: dict[str, Any]) -> bytes:
    c = Canvas(W, H)
    samples = report["timeline"]
    agents = max(1, report["agents"])
    t_min = samples[0]["t"] if samples else 0.0
    t_max = max(t_min + 1.0, samples[-1]["t"] if samples else 1.0)
    x0, y0, x1, y1 = TOP

    def tx(t: float) -> int:
        return int(x0 + (t - t_min) / (t_max - t_min) * (x1 - x0))

    def ty(n: float) -> int:
        return int(y1 - n / agents * (y1 - y0))

    for f in report["faults"]:
        fx = tx(f["at"])
        c.rect(fx, y0, fx + 2, y1, COLORS["fault"])
    c.line(x0, y1, x1, y1, COLORS["axis"])
    c.line(x0, y0, x0, y1, COLORS["axis"])
    for site in ("a", "b"):
        prev: tuple[int, int] | None = None
        for s in samples:
            p = (tx(s["t"]), ty(s["ready"].get(site, 0)))
            if prev is not None:
                c.line(prev[0], prev[1], p[0], p[1], COLORS[site])
            prev = p
    rec = report["recovery_times"]
    hx0, hy0, hx1, hy1 = BOTTOM
    c.line(hx0, hy1, hx1, hy1, COLORS["axis"])
    if rec:
        top = max(rec) or 1.0
        bins = [0] * 50
        for r in rec:
            bins[min(49, int(r / top * 50))] += 1
        most = max(bins)
        bw = (hx1 - hx0) // 50
        for i, n in enumerate(bins):
            if n:
                c.rect(hx0 + i * bw, int(hy1 - n / most * (hy1 - hy0)), hx0 + (i + 1) * bw - 2, hy1, COLORS["hist"])
    return c.png()


def page(report: dict[str, Any]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(x['name'])}</td><td>{e(str(x['expected']))}</td><td>{e(str(x['actual']))}</td>"
        f"<td class={'ok' if x['ok'] else 'bad'}>{'pass' if x['ok'] else 'FAIL'}</td></tr>"
        for x in report["expectations"])
    faults = "".join(f"<li>t={f['at']:.1f} s: {e(f['action'])} {e(f['site'])}</li>" for f in report["faults"])
    r = report["recovery_s"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    how = report.get("moved_by") or {}
    moved_by = f" ({', '.join(f'{n} by {e(k)}' for k, n in sorted(how.items()))})" if how else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ccdr drill {e(report['scenario'])}: {verdict}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}td,th{{padding:.2em .8em;text-align:left}}
.ok{{color:#2a2}}.bad{{color:#c22;font-weight:bold}}</style></head><body>
<h1>Drill <code>{e(report['scenario'])}</code>:
<span class="{'ok' if report['passed'] else 'bad'}">{verdict}</span></h1>
<p>{report['agents']} agents; {report['moved_agents']} moved{moved_by}; {report['lost_agents']} lost;
{report['agents_at_both_sites']} at both sites. Recovery per moved agent (fault to ready at the other
site, verified through AMI): p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s, max {r['max']:.2f} s.</p>
<table><tr><th>expectation</th><th>expected</th><th>actual</th><th></th></tr>{rows}</table>
<h2>Faults</h2><ul>{faults}</ul>
<h2>Timeline</h2>
<p><img src="timeline.png" alt="timeline" width="{W}" height="{H}"></p>
<p>Top: agents ready at site a (blue) and site b (green) over time, seconds from the first fault;
grey bars mark the faults. Bottom: histogram of per-agent recovery times, 0 to
{r['max']:.2f} s left to right.</p>
</body></html>
"""


def write(report: dict[str, Any], out: Path) -> None:
    """All three files, or none: written under temporary names, then renamed."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"report.json": json.dumps(report, indent=2, sort_keys=True).encode() + b"\n",
             "report.html": page(report).encode(), "timeline.png": timeline_png(report)}
    for name, data in files.items():
        (out / f".{name}.tmp").write_bytes(data)
    for name in files:
        (out / f".{name}.tmp").replace(out / name)
