"""The report's plots (matplotlib, Agg): each metric and the loss over steps, with −margin drawn
and every refuted (rejected) candidate marked.  Returned as PNG bytes so a page can embed them."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scpo_spec.report.evidence import Evidence  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _finish(fig, ax, title: str, ylabel: str) -> bytes:
    """The styling every report plot shares, then the PNG."""
    ax.set_title(title, fontsize=9, loc="left")
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.25)
    return _png(fig)


def _finite_top(values: np.ndarray, fallback: float) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else fallback


def metric_plot(ev: Evidence, i: int) -> bytes:
    m = ev.metrics[i]
    s = ev.series
    xs = np.asarray(s.accepted_x)
    ys = np.asarray(s.accepted_g, dtype=float)[:, i] if s.accepted_g else np.zeros(0)
    fig, ax = plt.subplots(figsize=(7.0, 2.6))
    ax.plot(xs, ys, color="#1f5fa8", lw=1.6, marker="." if len(xs) < 60 else None,
            label="accepted iterates g(θ_k)")
    ax.axhline(-m["margin"], color="#c0392b", ls="--", lw=1.2, label=f"−margin = {-m['margin']:g}")
    ax.axhline(0.0, color="#555", lw=0.6)
    if s.rejected_x:
        rg = np.asarray(s.rejected_g, dtype=float)[:, i]
        rx = np.asarray(s.rejected_x)
        top = max(_finite_top(np.r_[ys, rg], 0.0), 0.0)
        span = top - min(ys.min() if ys.size else 0.0, 0.0)
        shown = np.where(np.isfinite(rg), rg, top + 0.1 * (span or 1.0))
        ax.scatter(rx, shown, marker="x", color="#c0392b", s=28, zorder=3,
                   label="rejected candidates (verified)")
    for x in s.failed_x:
        ax.axvline(x, color="#e67e22", lw=0.5, alpha=0.5)
    return _finish(fig, ax, f"{m['section']} {m['name']}:  {m['formula']}", "g")


def loss_plot(ev: Evidence) -> bytes:
    s = ev.series
    fig, ax = plt.subplots(figsize=(7.0, 2.6))
    ax.plot(s.accepted_x, s.accepted_loss, color="#27774b", lw=1.6, label="loss of accepted iterates")
    pts = [(x, l) for x, l in zip(s.rejected_x, s.rejected_loss) if l is not None]
    if pts:
        ax.scatter(*zip(*pts), marker="x", color="#c0392b", s=28, zorder=3,
                   label="rejected candidates")
    return _finish(fig, ax, f"loss — {ev.header.objective or ''}", "L(θ)")


def all_plots(ev: Evidence) -> list[tuple[str, str, bytes]]:
    """(file stem, caption, PNG) for the loss and each metric."""
    out = [("loss", "Loss over steps", loss_plot(ev))]
    for i, m in enumerate(ev.metrics):
        out.append((f"metric_{i}_{m['name']}", f"{m['name']} over steps", metric_plot(ev, i)))
    return out
