#!/usr/bin/env python3
"""Plot the load harness's latency curves as an SVG, with no dependencies.

    python3 scripts/plot_bench.py bench-results.json docs/bench-latency.svg

One panel per load (each gRPC scenario, then Envoy): latency against
percentile, on a "number of nines" axis (p50, p90, p99, p99.9, p99.99), for
every server the harness measured. The input is the JSON `go run ./bench`
writes (-out).
"""

import html
import json
import math
import sys

W, H = 420, 300           # one panel
ML, MR, MT, MB = 58, 26, 34, 44
COLORS = {
    "floor": "#7f7f7f",
    "tollgate": "#d62728",
    "no_ext_authz": "#7f7f7f",
    "ext_authz_floor": "#1f77b4",
    "ext_authz": "#d62728",
}
OTHER = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
TICKS_Q = [0.5, 0.9, 0.99, 0.999, 0.9999]


def nines(q):
    return -math.log10(max(1 - q, 1e-6))


def esc(s):
    return html.escape(str(s), quote=True)


def panel(x0, title, curves):
    """curves: [(name, [(q, us), ...])]; returns SVG elements."""
    out = []
    pts = [(q, us) for _, c in curves for q, us in c if q >= 0.5 and us > 0]
    if not pts:
        return out
    xmax = nines(max(q for q, _ in pts))
    xmin = nines(0.5)
    lo = min(us for _, us in pts)
    hi = max(us for _, us in pts)
    ylo = 10 ** math.floor(math.log10(lo))
    yhi = 10 ** math.ceil(math.log10(hi))
    pw, ph = W - ML - MR, H - MT - MB

    def px(q):
        return x0 + ML + (nines(q) - xmin) / max(xmax - xmin, 1e-9) * pw

    def py(us):
        return MT + ph - (math.log10(us) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)) * ph

    out.append(f'<text x="{x0 + W / 2}" y="18" text-anchor="middle" font-weight="bold">{esc(title)}</text>')
    out.append(f'<rect x="{x0 + ML}" y="{MT}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    # y grid: decades and 2x, 5x
    d = ylo
    while d <= yhi * 1.0001:
        for m in (1, 2, 5):
            v = d * m
            if ylo <= v <= yhi:
                y = py(v)
                out.append(f'<line x1="{x0 + ML}" y1="{y:.1f}" x2="{x0 + ML + pw}" y2="{y:.1f}" stroke="#ddd"/>')
                label = f"{v / 1000:g} ms" if v >= 1000 else f"{v:g} µs"
                out.append(f'<text x="{x0 + ML - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{label}</text>')
        d *= 10
    for q in TICKS_Q:
        if nines(q) <= xmax + 1e-9:
            x = px(q)
            out.append(f'<line x1="{x:.1f}" y1="{MT}" x2="{x:.1f}" y2="{MT + ph}" stroke="#ddd"/>')
            out.append(f'<text x="{x:.1f}" y="{MT + ph + 14}" text-anchor="middle" font-size="10">p{q * 100:g}</text>')
    out.append(f'<text x="{x0 + ML + pw / 2}" y="{H - 8}" text-anchor="middle" font-size="11">percentile</text>')
    extra = iter(OTHER)
    for i, (name, c) in enumerate(curves):
        color = COLORS.get(name) or next(extra, "#000")
        line = " ".join(f"{px(q):.1f},{py(us):.1f}" for q, us in c if q >= 0.5 and us > 0)
        out.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"/>')
        ly = MT + 14 + 14 * i
        out.append(f'<line x1="{x0 + ML + 8}" y1="{ly - 4}" x2="{x0 + ML + 26}" y2="{ly - 4}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{x0 + ML + 30}" y="{ly}" font-size="11">{esc(name)}</text>')
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        rep = json.load(f)
    panels = []
    for sc in rep.get("grpc", []):
        names = ["floor", "tollgate"] + sorted(n for n in sc["servers"] if n not in ("floor", "tollgate"))
        curves = [(n, [(p["q"], p["us"]) for p in sc["servers"][n]["latency_us"]["quantiles"]]) for n in names]
        panels.append((f"gRPC Check, {sc['name']}", curves))
    env = rep.get("envoy")
    if env:
        names = [n for n in ("no_ext_authz", "ext_authz_floor", "ext_authz") if n in env["configs"]]
        curves = [(n, [(p["q"], p["us"]) for p in env["configs"][n]["latency_us"]["quantiles"]]) for n in names]
        panels.append((f"HTTP through Envoy, {env['spec']['name']}", curves))
    m = rep.get("machine", {})
    width = W * max(len(panels), 1)
    els = []
    for i, (title, curves) in enumerate(panels):
        els += panel(i * W, title, curves)
    foot = f"{m.get('nproc', '?')} CPUs ({m.get('cpu_model', '?')}), {m.get('go_version', '')}, {rep.get('started', '')[:19]}"
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H + 16}" viewBox="0 0 {width} {H + 16}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{H + 16}" fill="white"/>',
        *els,
        f'<text x="6" y="{H + 10}" font-size="9" fill="#555">{esc(foot)}</text>',
        "</svg>",
    ]
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
