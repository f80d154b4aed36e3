#!/usr/bin/env bash
# Creates what a secure fedcmr federation needs:
#   OUT/ca.crt, OUT/ca.key              the federation's own certificate authority
#   OUT/superlink.crt, OUT/superlink.key the coordinator's TLS certificate (SAN below)
#   OUT/sites/<site-slug>[.pub]          one ECDSA key pair per hospital (node authentication),
#                                        for a federation on one machine (the demo, compose);
#                                        real hospitals make their own (`fedcmr keygen`) and
#                                        send only the .pub, which goes into OUT/sites/
# Private keys are written 0600 (readable by their owner only; compose runs the containers
# as that owner: FEDCMR_UID, FEDCMR_GID).
# Usage: deploy/make_certificates.sh OUT ["Site A" "Site B" ...]
#   SUPERLINK_SAN="DNS:coordinator.example.org,IP:10.0.0.5" adds names the sites dial.
# Register the public keys with the SuperLink (`fedcmr federate --secure` and the compose
# file's secure variant do it): flwr supernode register OUT/sites/<slug>.pub <connection>
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OUT_DIR [SITE...]" >&2
  exit 2
fi
umask 077  # every file below is created unreadable by others
out=$1; shift
mkdir -p "$out/sites"
cd "$out"
days=${CERT_DAYS:-365}
san="DNS:localhost,DNS:superlink,DNS:coordinator,IP:127.0.0.1${SUPERLINK_SAN:+,$SUPERLINK_SAN}"

openssl req -x509 -newkey rsa:3072 -nodes -keyout ca.key -out ca.crt -days "$days" \
  -subj "/CN=fedcmr federation CA" 2>/dev/null
openssl req -newkey rsa:3072 -nodes -keyout superlink.key -out superlink.csr \
  -subj "/CN=superlink" 2>/dev/null
printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" \
  "$san" > superlink.ext
openssl x509 -req -in superlink.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
  -out superlink.crt -days "$days" -extfile superlink.ext 2>/dev/null
rm -f superlink.csr superlink.ext ca.srl
chmod 600 ca.key superlink.key
chmod 644 ca.crt superlink.crt

for site in "$@"; do
  slug=$(printf '%s' "$site" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')
  rm -f "sites/$slug" "sites/$slug.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "$site" -f "sites/$slug"
  chmod 600 "sites/$slug"
  chmod 644 "sites/$slug.pub"
  echo "site '$site': sites/$slug"
done
echo "CA and SuperLink certificate (SAN $san) in $(pwd)"
