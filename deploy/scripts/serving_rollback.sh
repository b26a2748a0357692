#!/usr/bin/env bash
# Roll a serving endpoint back to its previous revision and wait until it serves again.
#
#   deploy/scripts/serving_rollback.sh <endpoint-id> [namespace]
#
# Environment (defaults as in the serving examples):
#   LLMOPS_BASE_URL        gateway API root   (http://localhost:8080/llm-ops/v1)
#   LLMOPS_USER_ID         X-User-Id          (admin)
#   LLMOPS_USER_ROLES      X-User-Roles       (admin)
#   LLMOPS_ROLLBACK_TIMEOUT seconds to wait   (300)
# With a namespace (Kubernetes runtime) it also shows `kubectl rollout status`.
# Exit codes: 0 rolled back and serving, 1 rollback refused or failed, 2 usage or unknown endpoint.
set -euo pipefail

usage() { echo "usage: $0 <endpoint-id> [namespace]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
endpoint_id=$1
namespace=${2:-}
base_url=${LLMOPS_BASE_URL:-http://localhost:8080/llm-ops/v1}
timeout_s=${LLMOPS_ROLLBACK_TIMEOUT:-300}
headers=(-H "X-User-Id: ${LLMOPS_USER_ID:-admin}" -H "X-User-Roles: ${LLMOPS_USER_ROLES:-admin}")

# field <json> <python expression on d>: read the envelope without needing jq.
field() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null || true; }

response=$(curl -sS -X POST "${headers[@]}" -w '\n%{http_code}' "$base_url/serving/endpoints/$endpoint_id/rollback") || {
  echo "error: cannot reach the gateway at $base_url" >&2; exit 1; }
code=${response##*$'\n'}
body=${response%$'\n'*}
if [[ $code != 200 ]]; then
  echo "rollback of $endpoint_id refused (HTTP $code): $(field "$body" 'd["message"]')" >&2
  [[ $code == 404 || $code == 400 ]] && exit 2
  exit 1
fi
echo "rolling back $endpoint_id to revision $(field "$body" 'd["data"]["revision"]') (model $(field "$body" 'd["data"]["modelId"]'))"

if [[ -n $namespace ]] && command -v kubectl >/dev/null; then
  kubectl rollout status "deployment/serving-$endpoint_id" -n "$namespace" --timeout="${timeout_s}s" || true
fi

deadline=$((SECONDS + timeout_s))
while ((SECONDS < deadline)); do
  body=$(curl -sS "${headers[@]}" "$base_url/serving/endpoints/$endpoint_id")
  status=$(field "$body" 'd["data"]["status"]')
  case $status in
    healthy)
      echo "endpoint $endpoint_id rolled back and healthy ($(field "$body" 'd["data"]["readyReplicas"]') replicas ready)"
      exit 0 ;;
    failed)
      echo "rollback of $endpoint_id failed: $(field "$body" 'd["data"]["statusReason"]')" >&2
      exit 1 ;;
  esac
  sleep 1
done
echo "timed out after ${timeout_s}s waiting for $endpoint_id to be healthy (status: ${status:-unknown})" >&2
exit 1
