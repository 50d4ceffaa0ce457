"""What every muonlab figure shares: legends beside the axes, never over the data."""

from __future__ import annotations

from matplotlib.axes import Axes


def legend_beside(ax: Axes, fontsize: int = 7) -> None:
    """The axes' legend to the right of them (tight_layout makes room); nothing when no line is labelled."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
