#!/usr/bin/env bash
# Prints the sha256 of an app bundle and the site policy line that lets a hospital run it.
# A site runs only the bundle its own installed fedcmr builds and those listed in its
# policy's approved_bundles (client/site/app_approval.py); to run another (a coordinator's newer
# fedcmr), review that code, then add the digest this prints to the site policy file.
# Usage: deploy/approve_bundle.sh [APP_DIR | BUNDLE.fab]
#   APP_DIR   a fedcmr source folder, as the coordinator submits it with `flwr run APP_DIR`
#             (default: the installed fedcmr's own)
#   BUNDLE.fab a bundle file (`flwr build`)
#   PYTHON=... the Python environment fedcmr is installed in (default: python)
set -euo pipefail
python=${PYTHON:-python}
if [ $# -gt 1 ]; then
  echo "usage: $0 [APP_DIR | BUNDLE.fab]" >&2
  exit 2
fi
if [ $# -eq 0 ]; then
  app=$("$python" -c 'from fedcmr.common.app_bundle import app_dir; print(app_dir())')
else
  app=$1
fi
if [ -d "$app" ]; then
  digest=$("$python" -c 'import sys
from pathlib import Path
from fedcmr.common.app_bundle import bundle_digest
print(bundle_digest(Path(sys.argv[1])))' "$app")
elif [ -f "$app" ]; then
  digest=$(sha256sum "$app" | cut -d' ' -f1)
else
  echo "$app: no such folder or .fab file" >&2
  exit 2
fi
echo "$app: sha256 $digest"
echo "add to the site policy (or append the digest to its approved_bundles list):"
echo "approved_bundles = [\"$digest\"]"
