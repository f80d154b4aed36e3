#!/bin/sh
# The coordinator container: `fedcmr server` with the settings the compose file passes as
# environment; each one left empty is fedcmr's own default (docs/cli.md). Environment:
# FEDCMR_STRATEGY, FEDCMR_VOTE_ALPHA, FEDCMR_PROFILE, FEDCMR_EPOCHS, FEDCMR_FOLD,
# FEDCMR_PROTOCOL, FEDCMR_MIN_SUBJECTS; FEDCMR_RESUME=1 continues the run in
# /runs/federated from its checkpoint (after the coordinator failed: every completed round
# is kept); CERTS (docker-compose.secure.yml): TLS and node authentication from that folder.
set -u
out=/runs/federated
set -- --sites 4 --port 9092 --out "$out"
for pair in STRATEGY:--strategy VOTE_ALPHA:--vote-alpha PROFILE:--profile EPOCHS:--epochs \
            FOLD:--fold PROTOCOL:--protocol MIN_SUBJECTS:--min-subjects; do
  eval "value=\${FEDCMR_${pair%%:*}:-}"
  if [ -n "$value" ]; then
    set -- "$@" "${pair#*:}" "$value"
  fi
done
if [ -n "${CERTS:-}" ]; then
  set -- "$@" --secure "$CERTS"
else
  set -- "$@" --insecure
fi
case "${FEDCMR_RESUME:-}" in
  1|yes|true) set -- "$@" --resume ;;
  ""|0|no|false)
    if [ -f "$out/checkpoint/settings.json" ]; then
      echo "coordinator: $out holds the checkpoint of an earlier run. To continue it:" \
           "FEDCMR_RESUME=1 docker compose up --exit-code-from coordinator; to start" \
           "over: another FEDCMR_RUNS folder (docs/deployment.md)" >&2
    fi ;;
  *) echo "coordinator: FEDCMR_RESUME=$FEDCMR_RESUME: expected 1 (continue the run) or" \
          "0 (start one). Fix: FEDCMR_RESUME=1 or unset it" >&2
     exit 2 ;;
esac
exec fedcmr server "$@"
