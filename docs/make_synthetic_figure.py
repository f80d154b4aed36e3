"""Draw docs/img/synthetic_cohort.png: mid-ventricular ED and ES slices, NOR and HCM, per centre.

Run from the repository root: `.venv/bin/python docs/make_synthetic_figure.py [--seed N]`.
It renders in memory with the same code that `fedcmr synth` writes to disk.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedcmr.lab.synthetic import (  # noqa: E402
    CENTRE_ORDER,
    SCANNERS,
    SubjectPlan,
    max_wall_thickness_mm,
    plan_cohort,
    render_subject,
)

OUT = Path(__file__).parent / "img" / "synthetic_cohort.png"


def mid_slice(plan: SubjectPlan) -> int:
    """The slice nearest 40% of the way from base to apex at ED."""
    k = round((0.4 * plan.heart.length - plan.z0) / plan.dz)
    return int(np.clip(k, 0, plan.shape[0] - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    plans = plan_cohort(args.seed, 0.05)
    fig, axes = plt.subplots(4, 4, figsize=(12, 12.6), facecolor="black")
    for row, centre in enumerate(CENTRE_ORDER):
        for col, pathology in enumerate(("NOR", "HCM")):
            plan = next(p for p in plans if p.centre == centre and p.pathology == pathology)
            rendered = render_subject(plan, [plan.ed, plan.es])
            k = mid_slice(plan)
            vmax = float(np.percentile(rendered.image[0], 99.5))
            thick = max_wall_thickness_mm(rendered.labels[0], plan.spacing)
            ny, nx = plan.shape[1:]
            extent = (0, nx * plan.spacing, ny * plan.spacing, 0)
            for phase in range(2):
                ax = axes[row, 2 * col + phase]
                ax.imshow(rendered.image[phase, k], cmap="gray", vmin=0, vmax=vmax,
                          extent=extent, interpolation="nearest")  # fmt: skip
                ax.set_xlim(0, 280)
                ax.set_ylim(250, 0)
                ax.axis("off")
                name = "ED" if phase == 0 else "ES"
                sc = SCANNERS[centre]
                title = f"{centre} ({sc.vendor}) {pathology} {name}"
                if phase == 0:
                    title += f"\nmax wall {thick:.1f} mm, {plan.spacing:.2f}x{plan.dz:.0f} mm"
                else:
                    title += f"\nframe {plan.es} of {plan.frames}, ED {plan.ed}"
                ax.set_title(title, color="white", fontsize=8)
    fig.suptitle(
        "fedcmr synthetic cohort (seed 0): mid-ventricular short-axis slices, shown at a common"
        " physical scale (280 x 250 mm)",
        color="white",
        fontsize=10,
    )
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80, facecolor="black")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
