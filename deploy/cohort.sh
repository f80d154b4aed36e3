#!/bin/sh
# The `cohort` container: write the synthetic four-centre cohort once (kept when a rerun
# finds it), then stay up while the coordinator runs. Staying up is what lets
# `docker compose up --exit-code-from coordinator` return the coordinator's exit code: that
# flag stops every container as soon as any one exits, so no service may end before the
# coordinator. The hospitals start once this container is healthy (the cohort is written).
# Environment: FEDCMR_SCALE (cohort size), FEDCMR_WORKERS (processes writing it).
set -u
rm -f /tmp/fedcmr-cohort-written   # a restarted container: marked again once written
if ! { test -f /cohort/.fedcmr-synthetic.json && test -d /cohort/sites; }; then
  fedcmr -q synth --out /cohort --sites --scale "${FEDCMR_SCALE:-0.25}" \
    --workers "${FEDCMR_WORKERS:-2}" || exit $?
fi
touch /tmp/fedcmr-cohort-written   # the health check's mark
exec python /app/deploy/stay_while_up.py coordinator 9092
