#!/bin/sh
# A hospital container: prepare the site's own data (a no-op when the cache is current),
# then serve it as a SuperNode. Environment: SITE, SUPERLINK, optional CA and KEY (secure),
# MAX_WAIT (seconds without the coordinator before giving up; default 300).
set -u
wait_args="--max-wait-time ${MAX_WAIT:-300}"
fedcmr -q prepare --dataset folder --root /data/manifest.csv --out /site/cache \
  --workers "${WORKERS:-1}"
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then
  echo "hospital $SITE: preparing its data failed (exit $rc)" >&2
  exit "$rc"
fi
if [ -n "${CA:-}" ]; then
  exec fedcmr client --site "$SITE" --data /site/cache --superlink "$SUPERLINK" \
    --out /site/output --root-certificates "$CA" --auth-key "$KEY" $wait_args
fi
exec fedcmr client --site "$SITE" --data /site/cache --superlink "$SUPERLINK" \
  --out /site/output $wait_args
