"""curves.png: training loss and learning rate against the step, and the main dev metric at each evaluation."""

from __future__ import annotations

from pathlib import Path


def write_curves(path: Path, train_log: list[dict], history: list[dict], split: str, metric: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, (loss_ax, lr_ax, metric_ax) = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    steps = [r["step"] for r in train_log]
    for name in sorted({k for r in train_log for k in r} - {"step", "lr"}):
        loss_ax.plot(steps, [r.get(name) for r in train_log], label=name.replace("_", " "))
    loss_ax.set(title="training loss", xlabel="optimizer step")
    if len({k for r in train_log for k in r} - {"step", "lr"}) > 1:
        loss_ax.legend()
    lr_ax.plot(steps, [r["lr"] for r in train_log], color="tab:orange")
    lr_ax.set(title="learning rate", xlabel="optimizer step")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    points = [(r["step"], r[f"eval_{split}"][metric]) for r in history if metric in r.get(f"eval_{split}", {})]
    metric_ax.plot([s for s, _ in points], [v for _, v in points], marker="o", color="tab:green")
    metric_ax.set(title=f"{split} {metric}", xlabel="optimizer step")
    for ax in (loss_ax, lr_ax, metric_ax):
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
