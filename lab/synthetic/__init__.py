"""A synthetic four-centre HCM-vs-normal cohort, written in the real M&Ms and ACDC layouts.

The real datasets need registration and cannot be downloaded here, so every loader, the
preprocessing and the federated runs are exercised on this stand-in. It is built to be a fair
one: the same folder layout, file names, label numberings, frame conventions and metadata as
the real releases; a short-axis left ventricle that contracts over a cine cycle; HCM that is
thicker than normal with overlap (so image evidence cannot be perfect); and centres that differ
like scanners do (spacing, slice thickness, matrix, vendor contrast, bias field, noise), with
ACDC furthest from the rest. docs/synthetic-cohort.md describes the model and its numbers.

Every subject is seeded from (seed, centre, pathology, index) with numpy's SeedSequence, so the
voxels do not depend on the worker count, and a smaller `scale` keeps a prefix of each class.

Modules, one job each: scanners (centre profiles), subject (the parameter records of one
subject), plan (the random draw of those parameters), render (applying them deterministically),
measure (measurements on label maps) and layouts (writing the M&Ms and ACDC layouts).
"""

from fedcmr.lab.synthetic.layouts import (
    MARKER_NAME,
    MNMS_CSV_NAME,
    CentreSummary,
    SynthSummary,
    synthesize,
    write_subject,
)
from fedcmr.lab.synthetic.measure import max_wall_thickness_mm
from fedcmr.lab.synthetic.plan import class_counts, plan_cohort
from fedcmr.lab.synthetic.render import Rendered, render_labels, render_subject
from fedcmr.lab.synthetic.scanners import CENTRE_ORDER, SCANNERS, Scanner
from fedcmr.lab.synthetic.subject import SubjectPlan

__all__ = [
    "CENTRE_ORDER",
    "MARKER_NAME",
    "MNMS_CSV_NAME",
    "SCANNERS",
    "CentreSummary",
    "Rendered",
    "Scanner",
    "SubjectPlan",
    "SynthSummary",
    "class_counts",
    "max_wall_thickness_mm",
    "plan_cohort",
    "render_labels",
    "render_subject",
    "synthesize",
    "write_subject",
]
