"""A timeline as a picture: stacked emotion probabilities over time, with the merged segments above."""

from __future__ import annotations

from pathlib import Path

from shared.constants import EMOTIONS
from shared.timeline import Timeline

#: One colour per emotion, in ``EMOTIONS`` order (colour-blind safe, Okabe-Ito).
COLOURS = ("#999999", "#E69F00", "#0072B2", "#D55E00", "#CC79A7", "#009E73")


def plot_timeline(timeline: Timeline, dest: Path, title: str = "") -> Path:
    """Write a PNG of ``timeline`` to ``dest``: the probabilities of every emotion stacked over time
    (each window drawn over the stretch it owns; blank where there is no speech) and a strip of the
    segments' labels above. Returns ``dest``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    duration = max(timeline.summary.duration_s, 1e-3)
    fig, (strip, ax) = plt.subplots(
        2,
        1,
        figsize=(max(8.0, min(24.0, duration / 10)), 4.2),
        sharex=True,
        gridspec_kw={"height_ratios": [1, 5]},
    )
    # each window's probabilities over the stretch between the midpoints to its neighbours
    for region_windows in _by_region(timeline):
        bounds = [region_windows[0][0]]
        centres = [(w.start + w.end) / 2 for w in region_windows[1]]
        bounds += [(a + b) / 2 for a, b in zip(centres, centres[1:], strict=False)]
        bounds.append(region_windows[0][1])
        for window, left, right in zip(region_windows[1], bounds, bounds[1:], strict=False):
            bottom = 0.0
            for emotion, colour in zip(EMOTIONS, COLOURS, strict=True):
                p = window.probabilities[emotion]
                ax.fill_between([left, right], bottom, bottom + p, color=colour, linewidth=0)
                bottom += p
    for segment in timeline.segments:
        colour = COLOURS[EMOTIONS.index(segment.label)]
        strip.axvspan(segment.start, segment.end, color=colour)
        if segment.end - segment.start > duration / 40:
            strip.text(
                (segment.start + segment.end) / 2, 0.5, segment.label, ha="center", va="center", fontsize=8
            )
    strip.set_yticks([])
    strip.set_ylabel("segments", rotation=0, ha="right", va="center", fontsize=8)
    ax.set_xlim(0, duration)
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.legend(
        handles=[Patch(color=c, label=e) for e, c in zip(EMOTIONS, COLOURS, strict=True)],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.28),
        ncol=6,
        fontsize=8,
        frameon=False,
    )
    summary = timeline.summary
    heading = title or "emotion timeline"
    if summary.dominant:
        heading += (
            f": mostly {summary.dominant}, {summary.changes} changes, {summary.speech_s:.0f} s of speech"
        )
    elif timeline.reason:
        heading += f": {timeline.reason.replace('_', ' ')}"
    strip.set_title(heading, fontsize=10)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=100)
    plt.close(fig)
    return dest


def _by_region(timeline: Timeline) -> list[tuple[tuple[float, float], list]]:
    """The windows grouped by the speech region holding them: [((region start, end), windows)]."""
    groups = []
    for region in timeline.regions:
        inside = [
            w for w in timeline.windows if w.start >= region.start - 1e-6 and w.end <= region.end + 1e-6
        ]
        if inside:
            groups.append(((region.start, region.end), inside))
    return groups
