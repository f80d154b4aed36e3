"""Release policies for the lab's simulated hospitals (never a real site's default, which
is client/site_policy.py's)."""

from __future__ import annotations

from fedcmr.client.site_policy import SitePolicy

#: `fedcmr demo`'s synthetic hospitals at scale 0.25 hold 6-18 subjects: their validation
#: and test splits are 1-3 subjects, which the safe defaults withhold (no synthetic subject
#: is a patient). The run's min-subjects (5) still bounds training aggregates.
SMALL_SYNTHETIC_SITES = SitePolicy(min_subjects=1, min_eval_subjects=1, min_difference=1)
