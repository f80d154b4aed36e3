#!/bin/sh
# A hospital container: prepare the site's own data (a no-op when the cache is current),
# then serve it with `fedcmr client`, which stops with exit 0 when the coordinator says the
# run is over (so that `docker compose up` returns). Environment: SITE, SUPERLINK, optional
# CA and KEY (secure), MAX_WAIT (seconds without the coordinator before giving up; default:
# fedcmr client's --max-wait-time, docs/cli.md), PREPARE_ARGS (more `fedcmr prepare`
# options, e.g. --no-n4 for data already bias-corrected; every site must prepare alike).
set -u
set --
if [ -n "${MAX_WAIT:-}" ]; then
  set -- --max-wait-time "$MAX_WAIT"
fi
# shellcheck disable=SC2086  # PREPARE_ARGS: options, split on purpose
fedcmr -q prepare --dataset folder --root /data/manifest.csv --out /site/cache \
  --workers "${WORKERS:-1}" ${PREPARE_ARGS:-}
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then
  echo "hospital $SITE: preparing its data failed (exit $rc)" >&2
  exit "$rc"
fi
if [ -n "${CA:-}" ]; then
  set -- "$@" --root-certificates "$CA" --auth-key "$KEY"
fi
exec fedcmr client --site "$SITE" --data /site/cache --superlink "$SUPERLINK" \
  --out /site/output "$@"
