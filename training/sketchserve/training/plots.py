"""Pictures of a run and a model: the loss curve, reconstructions, interpolations (matplotlib, Agg)."""

from __future__ import annotations

import json
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(metrics_path: Path, out_path: Path) -> Path | None:
    """Training loss, L_R and KL, and validation L_R and KL against step; ``None`` if nothing was logged."""
    if not metrics_path.is_file():
        return None
    records = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval" and "valid_recon" in r]
    if not train and not evals:
        return None
    plt = _pyplot()
    fig, (ax_r, ax_kl) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        steps = [r["step"] for r in train]
        ax_r.plot(steps, [r["recon"] for r in train], label="train L_R", alpha=0.6)
        ax_r.plot(steps, [r["loss"] for r in train], label="train loss", alpha=0.6)
        ax_kl.plot(steps, [r["kl"] for r in train], label="train KL", alpha=0.6)
    if evals:
        steps = [r["step"] for r in evals]
        ax_r.plot(steps, [r["valid_recon"] for r in evals], "o-", label="valid L_R")
        ax_kl.plot(steps, [r["valid_kl"] for r in evals], "o-", label="valid KL")
    for ax, title in ((ax_r, "reconstruction"), (ax_kl, "KL")):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
