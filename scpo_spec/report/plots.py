"""The report's plots (matplotlib, Agg), returned as PNG bytes so a page can embed them.

Each plot comes with a caption built from what was actually drawn (a colour is named only if
something has it), and its legend sits below the axes, where it cannot hide data.  The
`*_figure` functions return the figure itself, so tests can read its artists and legend."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from scpo_spec.report.evidence import Evidence  # noqa: E402

BLUE, GREEN, RED, ORANGE, GREY = "#1f5fa8", "#27774b", "#c0392b", "#e67e22", "#555555"
SCENARIO_COLOURS = ["#1f5fa8", "#8e44ad", "#16a085", "#7f6000"]   # no red: red means a bound
MAX_PANELS = 8  # signals drawn in the trajectory plot (a wide gymnasium observation is cut)

REFUTED = "refuted candidates (certificate refuted by rollout; ℓ doubled, step re-solved)"
NO_CANDIDATE = "updates rejected with no refuted candidate (no descent, solver failure)"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _legend_below(ax, ncol: int = 2, handles=None) -> None:
    """The legend under the axes (outside them): it never covers a curve or a marker."""
    kw = {} if handles is None else {"handles": handles}
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=ncol,
              frameon=False, **kw)


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=9, loc="left")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.25)


def _finite_top(values: np.ndarray, fallback: float) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else fallback


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# ---- metrics and loss over the steps ------------------------------------------------------------
def metric_figure(ev: Evidence, i: int):
    """(figure, caption) of metric i over the steps."""
    m = ev.metrics[i]
    s = ev.series
    xs = np.asarray(s.accepted_x)
    ys = np.asarray(s.accepted_g, dtype=float)[:, i] if s.accepted_g else np.zeros(0)
    fig, ax = plt.subplots(figsize=(7.0, 2.6))
    ax.plot(xs, ys, color=BLUE, lw=1.6, marker="." if len(xs) < 60 else None,
            label="g of the accepted policies")
    ax.axhline(-m["margin"], color=RED, ls="--", lw=1.2,
               label=f"−margin = {-m['margin'] + 0.0:g}")  # + 0.0: never "-0"
    ax.axhline(0.0, color=GREY, lw=0.6, label="g = 0 (above: violated)")
    caption = [f"{m['name']} over the steps. Blue: g of the {len(xs)} accepted policies (θ₀ at "
               "step 0; an accepted update of step k at k + 1). Dashed red: −margin, which every "
               "accepted policy must be at or below. Grey: g = 0."]
    if s.refuted_x:
        rg = np.asarray(s.refuted_g, dtype=float)[:, i]
        rx = np.asarray(s.refuted_x)
        top = max(_finite_top(np.r_[ys, rg], 0.0), 0.0)
        span = top - min(ys.min() if ys.size else 0.0, 0.0)
        shown = np.where(np.isfinite(rg), rg, top + 0.1 * (span or 1.0))
        ax.scatter(rx, shown, marker="x", color=RED, s=28, zorder=3, label=REFUTED)
        caption.append(f"Red ×: the {_plural(len(rx), 'refuted candidate')}, at the value of "
                       "this metric their rollout gave (a non-finite value is drawn at the top); "
                       "a refuted candidate is never accepted — ℓ was doubled and the step solved "
                       "again.")
    for j, x in enumerate(s.failed_x):
        ax.axvline(x, color=ORANGE, lw=0.6, alpha=0.6, label=NO_CANDIDATE if j == 0 else None)
    if s.failed_x:
        caption.append(f"Orange lines: the {_plural(len(s.failed_x), 'update')} rejected with no "
                       "refuted candidate (no loss decrease, or the solver failed); the policy "
                       "stayed unchanged there.")
    _style(ax, f"{m['section']} {m['name']}:  {m['formula']}", "step", "g")
    _legend_below(ax)
    return fig, " ".join(caption)


def loss_figure(ev: Evidence):
    """(figure, caption) of the loss over the steps."""
    s = ev.series
    fig, ax = plt.subplots(figsize=(7.0, 2.6))
    ax.plot(s.accepted_x, s.accepted_loss, color=GREEN, lw=1.6,
            label="loss of the accepted policies")
    caption = [f"Loss over the steps. Green: the loss of the {len(s.accepted_x)} accepted "
               "policies."]
    pts = [(x, l) for x, l in zip(s.refuted_x, s.refuted_loss) if l is not None]
    if pts:
        ax.scatter(*zip(*pts), marker="x", color=RED, s=28, zorder=3, label=REFUTED)
        caption.append(f"Red ×: the loss of the {_plural(len(pts), 'refuted candidate')} (none "
                       "was accepted).")
    _style(ax, f"loss — {ev.header.objective or ''}", "step", "L(θ)")
    _legend_below(ax)
    return fig, " ".join(caption)


# ---- what the final policy does -----------------------------------------------------------------
def _draw_bound(ax, b, shade_to, label: str | None = None) -> bool:
    """Dashed red lines at a box bound (the first one carries `label`), the outside shaded;
    True if anything was drawn."""
    lo_y, hi_y = shade_to
    drawn = False
    for v, upper in ((b.hi, True), (b.lo, False)):
        if v is None:  # a one-sided bound
            continue
        ax.axhline(v, color=RED, ls="--", lw=1.0, label=None if drawn else label)
        ax.axhspan(*((v, max(hi_y, v)) if upper else (min(lo_y, v), v)), color=RED, alpha=0.07,
                   lw=0)
        drawn = True
    return drawn


def _limits(values: np.ndarray, b) -> tuple[float, float]:
    """y-limits that hold the curves and the bound lines, with a little room."""
    v = values[np.isfinite(values)]
    pts = [*(v.min(), v.max())] if v.size else [0.0, 0.0]
    if b is not None:
        pts += [x for x in (b.lo, b.hi) if x is not None]
    lo, hi = min(pts), max(pts)
    pad = 0.08 * (hi - lo or max(abs(hi), 1.0))
    return lo - pad, hi + pad


def trajectory_figure(tr):
    """(figure, caption): each state and input of the final policy's rollouts, with the box
    bounds of the spec's constraints."""
    signals = [(n, tr.states[:, :, j], "state") for j, n in enumerate(tr.state_names)]
    signals += [(n, tr.inputs[:, :, j], "input") for j, n in enumerate(tr.input_names)]
    cut = len(signals) - MAX_PANELS
    signals = signals[:MAX_PANELS]
    fig, axes = plt.subplots(len(signals), 1, figsize=(7.0, 1.5 * len(signals) + 0.6),
                             sharex=True, squeeze=False)
    bounded = []
    for ax, (name, values, kind) in zip(axes[:, 0], signals):
        for k in range(values.shape[0]):
            ax.plot(np.arange(values.shape[1]), values[k], lw=1.3,
                    color=SCENARIO_COLOURS[k % len(SCENARIO_COLOURS)], label=tr.labels[k])
        b = tr.bounds.get(name)
        ylim = _limits(values, b)
        if b is not None and _draw_bound(ax, b, ylim):
            bounded.append(f"{name} ({', '.join(b.sources)})")
        ax.set_ylim(*ylim)
        ax.set_ylabel(f"{name}\n({kind})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25)
    axes[0, 0].set_title("the final policy on training scenarios", fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("time step t", fontsize=8)
    handles = [Line2D([], [], color=SCENARIO_COLOURS[k % len(SCENARIO_COLOURS)], lw=1.3,
                      label=label) for k, label in enumerate(tr.labels)]
    if bounded:
        handles.append(Line2D([], [], color=RED, ls="--", lw=1.0,
                              label="box bound of a constraint (outside shaded)"))
    axes[-1, 0].legend(handles=handles, fontsize=7, loc="upper center", frameon=False,
                       bbox_to_anchor=(0.5, -0.38), ncol=2)
    fig.align_ylabels(axes[:, 0])
    caption = [f"The final policy rolled out on {_plural(len(tr.labels), 'training scenario')}, "
               "one colour each: " + "; ".join(tr.labels) + "."]
    caption.append("Dashed red: the box bounds of " + ", ".join(bounded) + ", the outside shaded."
                   if bounded else "No constraint is a plain box bound on a signal, so no bound "
                   "is drawn (the metrics above are the complete check).")
    if cut > 0:
        caption.append(f"{_plural(cut, 'further signal')} not drawn.")
    return fig, " ".join(caption)


def regression_figure(fit):
    """(figure, caption): the final model f(x) against its data and the safety band."""
    fig, ax = plt.subplots(figsize=(7.0, 3.2))
    caption = []
    if fit.data_x is not None:
        ax.scatter(fit.data_x, fit.data_y, s=7, color=GREY, alpha=0.45, lw=0,
                   label=f"data ({len(fit.data_x)} rows)")
        caption.append(f"Grey dots: the {len(fit.data_x)} data rows the loss was fitted to.")
    else:
        caption.append(f"No data points: {fit.data_note}.")
    ax.plot(fit.x, fit.fx, color=BLUE, lw=1.6, label=f"final model {fit.output_name} = f({fit.input_name})")
    ax.plot(fit.scenario_x, fit.scenario_fx, ls="none", marker="|", ms=7, color="black",
            label=f"f at the {len(fit.scenario_x)} scenarios where safety was checked")
    caption.append(f"Blue: the final model f({fit.input_name}). Black ticks: f at the "
                   f"{len(fit.scenario_x)} training scenarios, where every accepted policy was "
                   "verified.")
    vals = np.r_[fit.fx, fit.data_y if fit.data_y is not None else []]
    ylim = _limits(vals, fit.band)
    band = f"safety band ({', '.join(fit.band.sources)}), outside shaded" if fit.band else None
    if fit.band is not None and _draw_bound(ax, fit.band, ylim, band):
        caption.append(f"Dashed red: the safety band of {', '.join(fit.band.sources)}, the "
                       "outside shaded; data outside it are labels the constraint forbids "
                       "the model to follow.")
    ax.set_ylim(*ylim)
    _style(ax, f"the final model against the data: {fit.output_name} = f({fit.input_name})",
           fit.input_name, fit.output_name)
    _legend_below(ax, handles=None)
    ax.get_legend().set_bbox_to_anchor((0.5, -0.2))
    return fig, " ".join(caption)


def all_plots(ev: Evidence) -> list[tuple[str, str, bytes]]:
    """(file stem, caption, PNG) for the loss, each metric, then the final policy's pictures."""
    out = [("loss", *_caption_png(loss_figure(ev)))]
    for i, m in enumerate(ev.metrics):
        out.append((f"metric_{i}_{m['name']}", *_caption_png(metric_figure(ev, i))))
    if ev.regression is not None:
        out.append(("regression_fit", *_caption_png(regression_figure(ev.regression))))
    if ev.trajectories is not None:
        out.append(("trajectories", *_caption_png(trajectory_figure(ev.trajectories))))
    return out


def _caption_png(fig_caption) -> tuple[str, bytes]:
    fig, caption = fig_caption
    return caption, _png(fig)
