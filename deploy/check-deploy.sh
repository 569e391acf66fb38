#!/usr/bin/env bash
# Checks the deployment files with the real tools; exits non-zero on the first failure. From anywhere:
#
#   bash deploy/check-deploy.sh           Compose files and Kubernetes manifests (CI: deploy/test.sh)
#   bash deploy/check-deploy.sh --image   also the image's install steps in a clean virtual environment
#                                         (tests/deploy/test_image_install.py, which the suite runs anyway)
#
# Compose: Debian's docker-compose 1.29 parses everything these files use (depends_on conditions, GPU
# reservations, profiles) except the top-level `name`, which they leave out; so the real tool checks
# them, not a JSON schema. Secrets are interpolated from a dummy env file made from deploy/env.example:
# its uncommented variables, the empty ones set to "dummy"; optional ones keep their defaults.
# Kubernetes: each overlay rendered by `kubectl kustomize` (a copy of deploy/k8s with secrets.env made
# from secrets.env.example: the real one is never committed), then `kubernetes-validate --strict`
# against the newest Kubernetes it bundles, so an unknown or misspelt field fails too.
# Needs docker-compose and kubectl (Debian: docker-compose, kubernetes-client) and the dev extra's
# kubernetes-validate (.venv).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
KUBERNETES_VERSION=${KUBERNETES_VERSION:-1.37.0}
validate=${KUBERNETES_VALIDATE:-$root/.venv/bin/kubernetes-validate}
[ -x "$validate" ] || validate=$(command -v kubernetes-validate || true)

missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=("docker-compose (apt-get install docker-compose)")
command -v kubectl >/dev/null 2>&1 || missing+=("kubectl (apt-get install kubernetes-client)")
[ -n "$validate" ] || missing+=("kubernetes-validate (bash deploy/setup.sh dev)")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'check-deploy: missing %s\n' "${missing[@]}" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== Compose: docker-compose config (docker-compose $(docker-compose version --short))"
grep -E '^[A-Z_]+=' deploy/env.example | sed -E 's/=$/=dummy/' > "$work/dummy.env"
compose() { DEPLOY_ENV_FILE="$work/dummy.env" docker-compose --env-file "$work/dummy.env" "$@"; }
compose -f deploy/compose.yaml config -q
echo "deploy/compose.yaml: valid"
compose -f deploy/compose.yaml -f deploy/compose.cpu.yaml config -q
echo "deploy/compose.yaml + deploy/compose.cpu.yaml: valid"

echo "== Kubernetes: kubectl kustomize, kubernetes-validate --strict -k $KUBERNETES_VERSION"
cp -r deploy/k8s "$work/k8s"
rm -f "$work/k8s/base/secrets.env"  # a developer's real one: the check uses the template
sed -E 's/=$/=dummy/' deploy/k8s/base/secrets.env.example > "$work/k8s/base/secrets.env"
for overlay in "$work"/k8s/overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" > "$work/$name.yaml"
  "$validate" --strict --quiet -k "$KUBERNETES_VERSION" "$work/$name.yaml"
  echo "deploy/k8s/overlays/$name: $(grep -c '^kind:' "$work/$name.yaml") resources, valid"
done

if [ "${1:-}" = "--image" ]; then
  echo "== Image: the Dockerfile's install steps in a clean virtual environment"
  "$root/.venv/bin/python" -m pytest -q -p no:cacheprovider tests/deploy/test_image_install.py
fi
echo "check-deploy: all checks passed"
