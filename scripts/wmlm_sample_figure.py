"""Draw the modalities of a few WMLM samples side by side (docs/figures/wmlm_samples.png).

    python scripts/wmlm_sample_figure.py --out docs/figures/wmlm_samples.png
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from edgecloud.wireless.dataset import SampleGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/figures/wmlm_samples.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, nargs="+", default=[0, 3, 5])
    args = parser.parse_args()
    generator = SampleGenerator(seed=args.seed)
    fig, axes = plt.subplots(len(args.scenes), 4, figsize=(17, 3.6 * len(args.scenes)))
    for row, index in zip(np.atleast_2d(axes), args.scenes, strict=True):
        s = generator.sample("main", index)
        scene = s.scene
        ax = row[0]
        for lo, hi, colour in ((b[0], b[1], "0.6") for b in zip(scene.buildings.lo, scene.buildings.hi, strict=True)):
            ax.add_patch(plt.Rectangle(lo[:2], *(hi - lo)[:2], color=colour))
        for lo, hi in zip(scene.vehicles.lo, scene.vehicles.hi, strict=True):
            ax.add_patch(plt.Rectangle(lo[:2], *(hi - lo)[:2], color="tab:blue"))
        ax.plot(*scene.bs[:2], "k^", ms=9, label="mast")
        ax.plot(*scene.user[:2], "r*", ms=12, label="user")
        ax.plot([scene.bs[0], scene.user[0]], [scene.bs[1], scene.user[1]], "r-" if s.los else "r:", lw=1)
        ax.scatter(s.lidar[:, 0], s.lidar[:, 1], s=2, c="k", label="LiDAR")
        ax.set_xlim(-5, 90)
        ax.set_ylim(-25, 25)
        ax.set_aspect("equal")
        ax.set_title(f"scene {index}: {'LoS' if s.los else 'NLoS'} (top view)", fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
        row[1].imshow(s.image)
        row[1].set_title("camera at the mast", fontsize=9)
        row[1].axis("off")
        beams = generator.codebook.conj() @ s.channel[-1]  # (beam, subcarrier)
        angle_delay = np.abs(np.fft.ifft(beams, axis=1, norm="ortho")) ** 2
        row[2].imshow(10 * np.log10(angle_delay / angle_delay.max() + 1e-6), aspect="auto", vmin=-40, cmap="viridis")
        row[2].axhline(s.best_beam, color="r", lw=0.8)
        row[2].set_title(f"channel, beam x delay (dB); best beam {s.best_beam} (red)", fontsize=9)
        row[2].set_xlabel("delay bin (10 ns)")
        row[2].set_ylabel("DFT beam")
        row[3].axis("off")
        row[3].text(0, 1, "\n".join(textwrap.wrap(s.text, 60)), va="top", fontsize=8, family="monospace")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)


if __name__ == "__main__":
    main()
