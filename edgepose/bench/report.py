"""Readable benchmark results: terminal tables, a stacked-bar plot and a markdown summary.

All three take the run records that ``edgepose bench --json`` writes and the history stores, so a
report of a fresh run and one of last month's runs look the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgepose.bench.fingerprint import device_label
from edgepose.errors import UsageError

_STAGE_COLOURS = {"preprocess": "#4C72B0", "inference": "#DD8452", "postprocess": "#55A868"}


def run_label(run: dict[str, Any]) -> str:
    """``model/runtime/precision @ device`` (plus the mode when it is throughput)."""
    fp = run["fingerprint"]
    label = f"{fp.get('model', '?')}/{run['runtime']}/{run['precision']} @ {device_label(fp)}"
    if run["mode"] != "latency":
        label += f" [{run['mode']}]"
    return label


def _ms(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def stage_table(runs: list[dict[str, Any]], title: str = "edgepose bench (ms)") -> Any:
    """One row per run and stage: mean, std, min, p50, p90, p99, max."""
    from rich.table import Table

    from edgepose.bench.timing import STAGES, STATS

    table = Table(title=title)
    table.add_column("bundle", overflow="fold")
    table.add_column("stage", no_wrap=True)
    for stat in STATS:
        table.add_column(stat, justify="right")
    for i, run in enumerate(runs):
        for stage in STAGES:
            figures = run["stages"][stage]
            style = "bold" if stage == "total" else None
            table.add_row(
                run["bundle"] if stage == STAGES[0] else "",
                stage,
                *(_ms(figures[s]) for s in STATS),
                style=style,
                end_section=stage == "total" and i < len(runs) - 1,
            )
    return table


def summary_table(runs: list[dict[str, Any]]) -> Any:
    """FPS, first frame and each run's p50 ratio to the first run (total and inference)."""
    from rich.table import Table

    modes = sorted({r["mode"] for r in runs})
    busy = any(r["fingerprint"].get("busy") for r in runs)
    overhead = max(r["timer_overhead_ms"] for r in runs) * 1000
    table = Table(
        title=f"summary ({', '.join(modes)} mode)",
        caption=f"× = p50 ratio to the first bundle; timer overhead {overhead:.2f} µs per iteration"
        + ("; machine busy: figures are noisy" if busy else ""),
    )
    table.add_column("bundle", overflow="fold")
    table.add_column("runtime", overflow="fold")
    for col in ("FPS", "total p50", "first frame", "× total", "× infer"):
        table.add_column(col, justify="right")
    base = runs[0]["stages"]
    for run in runs:
        st = run["stages"]
        table.add_row(
            run["bundle"],
            f"{run['runtime']} {run['precision']}",
            f"{run['fps']:.1f}",
            _ms(st["total"]["p50"]),
            _ms(run["first_frame_ms"]),
            f"{st['total']['p50'] / base['total']['p50']:.2f}",
            f"{st['inference']['p50'] / base['inference']['p50']:.2f}",
        )
    return table


def history_table(runs: list[dict[str, Any]]) -> Any:
    """The report's table: one row per stored run, p50 per stage, total spread, FPS."""
    from rich.table import Table

    busy = any(r["fingerprint"].get("busy") for r in runs)
    table = Table(
        title=f"edgepose benchmark history ({len(runs)} run(s), ms)",
        caption="* run on a busy machine (load average > half the cores)" if busy else None,
    )
    table.add_column("id", justify="right")
    table.add_column("run", overflow="fold", min_width=24)
    for col in ("pre", "infer", "post", "total p50", "p90", "p99", "FPS"):
        table.add_column(col, justify="right")
    for run in runs:
        st = run["stages"]
        table.add_row(
            str(run.get("id", "")),
            run_label(run),
            _ms(st["preprocess"]["p50"]),
            _ms(st["inference"]["p50"]),
            _ms(st["postprocess"]["p50"]),
            _ms(st["total"]["p50"]),
            _ms(st["total"]["p90"]),
            _ms(st["total"]["p99"]),
            f"{run['fps']:.1f}" + ("*" if run["fingerprint"].get("busy") else ""),
        )
    return table


def plot_runs(runs: list[dict[str, Any]], out: str | Path) -> Path:
    """Horizontal stacked bars of stage p50 per run, total p90/p99 whiskers; written as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise UsageError(
            "--plot needs matplotlib, which is not installed: pip install 'edgepose[report]'"
        ) from e
    if not runs:
        raise UsageError("no runs to plot")
    out = Path(out)
    labels = [f"#{r['id']}  {run_label(r)}" if "id" in r else run_label(r) for r in runs]
    n = len(runs)
    fig, ax = plt.subplots(figsize=(11, 2.2 + 0.55 * n), dpi=120)
    ys = list(range(n))[::-1]  # first run on top
    left = [0.0] * n
    for stage, colour in _STAGE_COLOURS.items():
        widths = [r["stages"][stage]["p50"] for r in runs]
        ax.barh(ys, widths, left=left, height=0.6, color=colour, label=f"{stage} p50", edgecolor="white")
        left = [a + b for a, b in zip(left, widths)]
    xmax = max(r["stages"]["total"]["p99"] for r in runs)
    for y, r in zip(ys, runs):
        t = r["stages"]["total"]
        ax.hlines(y, t["p50"], t["p99"], color="black", linewidth=1.2)
        ax.plot([t["p90"]], [y], marker="|", markersize=14, color="black", markeredgewidth=1.5)
        ax.plot([t["p99"]], [y], marker="|", markersize=20, color="black", markeredgewidth=1.5)
        ax.plot([t["p50"]], [y], marker="o", markersize=4, color="black")
        ax.text(
            t["p99"] + 0.015 * xmax, y, f"{t['p50']:.1f} ms · {r['fps']:.0f} FPS", va="center", fontsize=9
        )
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlim(0, xmax * 1.3)
    ax.set_xlabel("latency per frame (ms)")
    ax.grid(axis="x", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=8, frameon=False, ncol=3)
    busy = sum(bool(r["fingerprint"].get("busy")) for r in runs)
    note = "bars: p50 of each stage, stacked · whisker: total p50 ● → p90 (short tick) → p99 (long tick)"
    if busy:
        note += f"\n{busy} of {n} run(s) on a busy machine (load average > half the cores): noisier figures"
    ax.set_title("edgepose latency per stage", fontsize=12, loc="left", pad=26)
    fig.text(0.99, 0.01, note, ha="right", va="bottom", fontsize=7.5, color="#555555")
    fig.tight_layout(rect=(0, (0.3 + note.count("\n") * 0.15) / fig.get_figheight(), 1, 1))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    except OSError as e:
        raise UsageError(f"cannot write plot {out}: {e.strerror or e}") from e
    finally:
        plt.close(fig)
    return out


def markdown(runs: list[dict[str, Any]]) -> str:
    """A markdown table with the report's figures, then each distinct device's fingerprint."""
    lines = [
        "# edgepose benchmark report",
        "",
        "| id | date | model | runtime | precision | mode | device | pre p50 | infer p50 | post p50 "
        "| total p50 | p90 | p99 | FPS | first frame | busy |",
        "|---:|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        st, fp = r["stages"], r["fingerprint"]
        lines.append(
            f"| {r.get('id', '')} | {str(r.get('created', ''))[:10]} | {fp.get('model')} | {r['runtime']} "
            f"| {r['precision']} | {r['mode']} | {device_label(fp)} | {_ms(st['preprocess']['p50'])} "
            f"| {_ms(st['inference']['p50'])} | {_ms(st['postprocess']['p50'])} | {_ms(st['total']['p50'])} "
            f"| {_ms(st['total']['p90'])} | {_ms(st['total']['p99'])} | {r['fps']:.1f} "
            f"| {_ms(r['first_frame_ms'])} | {'yes' if fp.get('busy') else ''} |"
        )
    lines += [
        "",
        "Times in milliseconds per frame; FPS is 1000 / mean total in latency mode, frames completed per "
        "second in throughput mode.",
        "",
        "## Devices",
        "",
    ]
    seen = set()
    for r in runs:
        fp = r["fingerprint"]
        key = (
            fp.get("cpu"),
            fp.get("device_name"),
            fp.get("os"),
            fp.get("runtime"),
            fp.get("runtime_version"),
        )
        if key in seen:
            continue
        seen.add(key)
        extra = "".join(
            f", {k.replace('_', ' ')} {fp[k]}"
            for k in ("jetson_model", "jetpack", "power_mode", "tensorrt_version")
            if fp.get(k)
        )
        lines.append(
            f"- **{device_label(fp)}** ({fp.get('runtime')} {fp.get('runtime_version')}, device "
            f"{fp.get('device')}): CPU {fp.get('cpu')}, {fp.get('cores')} cores, "
            f"{', '.join(fp.get('isa') or []) or 'no ISA extensions reported'}, {fp.get('memory_gib')} GiB, "
            f"{fp.get('os')}, edgepose {fp.get('edgepose_version')}"
            f"{' @ ' + str(fp['git_commit'])[:10] if fp.get('git_commit') else ''}{extra}"
        )
    return "\n".join(lines) + "\n"
