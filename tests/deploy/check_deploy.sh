#!/usr/bin/env bash
# Validates deploy/: the Prometheus configuration and alert rules (promtool check), the alert
# rules' unit tests (promtool test rules), and the Grafana dashboard (valid JSON, every query
# parses as PromQL, every metric it or the alerts use is one parley exports).
# Usage: tests/deploy/check_deploy.sh        (PROMTOOL=/path/to/promtool to override)
# Exits non-zero when any check fails.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
deploy="$root/deploy"
promtool="${PROMTOOL:-promtool}"
if ! command -v "$promtool" >/dev/null 2>&1; then
  echo "check_deploy: promtool not found (apt-get install prometheus, or set PROMTOOL)" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

failed=0
step() {
  echo "== $*"
  if ! "$@"; then
    echo "FAILED: $*" >&2
    failed=1
  fi
}

# promtool check config insists that credentials_file exists: check a copy (next to a copy of
# the rules, so the relative rule_files path still resolves) that points at a scratch key.
cp "$deploy/prometheus/alerts.yml" "$tmp/alerts.yml"
echo "scratch-admin-key" >"$tmp/admin.key"
sed "s|credentials_file: /etc/parley/admin.key|credentials_file: $tmp/admin.key|" \
  "$deploy/prometheus/prometheus.yml" >"$tmp/prometheus.yml"
if ! grep -q "credentials_file: $tmp/admin.key" "$tmp/prometheus.yml"; then
  echo "FAILED: deploy/prometheus/prometheus.yml has no credentials_file: /etc/parley/admin.key" >&2
  failed=1
fi
step "$promtool" check config --lint=all --lint-fatal "$tmp/prometheus.yml"
step "$promtool" check rules --lint=all --lint-fatal "$deploy/prometheus/alerts.yml"
step "$promtool" test rules "$deploy/prometheus/alerts_test.yml"

# The dashboard: JSON, structure, and its queries as recording rules for promtool to parse.
check_dashboard() {
  python3 - "$deploy/grafana/parley-dashboard.json" "$deploy/prometheus/alerts.yml" \
    "$tmp/dashboard_rules.yml" <<'PY' || return 1
import json, re, sys

dash_path, alerts_path, rules_path = sys.argv[1:4]
with open(dash_path) as f:
    dash = json.load(f)
errors = []
names = {v["name"] for v in dash["templating"]["list"]}
for v in ("DS_PROMETHEUS", "tenant"):
    if v not in names:
        errors.append(f"templating variable {v} missing")
if not 36 <= dash.get("schemaVersion", 0) <= 39:
    errors.append(f"schemaVersion {dash.get('schemaVersion')} not ~38")

exprs = []
ids = set()
def walk(panels):
    for p in panels:
        if p["id"] in ids:
            errors.append(f"duplicate panel id {p['id']}")
        ids.add(p["id"])
        walk(p.get("panels", []))
        for t in p.get("targets", []):
            if t.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
                errors.append(f"panel {p['title']!r}: target not on ${{DS_PROMETHEUS}}")
            exprs.append((p["title"], t["expr"]))
walk(dash["panels"])
for v in dash["templating"]["list"]:
    if v["type"] == "query":
        m = re.match(r"label_values\((.*),\s*\w+\)$", v["query"]["query"])
        exprs.append((f"variable {v['name']}", m.group(1) if m else v["query"]["query"]))

# Every metric the dashboard and the alerts use must be one parley exports.
known = set("""
parley_build_info parley_http_requests_total parley_http_request_duration_seconds
parley_upstream_duration_seconds parley_overhead_duration_seconds
parley_time_to_first_token_seconds parley_tokens_total parley_admission_rejections_total
parley_cache_requests_total parley_budget_cutoffs_total parley_upstream_attempts_total
parley_upstream_retries_total parley_upstream_timeouts_total parley_upstream_fallbacks_total
parley_upstream_retry_budget_exhausted_total parley_upstream_breaker_state
parley_upstream_in_flight parley_actors parley_actor_passivations_total
parley_actor_restarts_total parley_tenant_in_flight parley_http_in_flight parley_streams_active
parley_store_pool_connections parley_store_query_duration_seconds parley_store_errors_total
parley_store_up parley_turn_commits_total parley_usage_parked_rows parley_usage_parked_dropped_total
process_resident_memory_bytes process_virtual_memory_bytes
process_cpu_seconds_total process_open_fds process_max_fds process_start_time_seconds
""".split())
histograms = """parley_http_request_duration_seconds parley_upstream_duration_seconds
parley_overhead_duration_seconds parley_time_to_first_token_seconds
parley_store_query_duration_seconds""".split()
for h in histograms:
    known |= {h + "_bucket", h + "_sum", h + "_count"}
with open(alerts_path) as f:
    alert_text = f.read()
for where, text in exprs + [("alerts.yml", alert_text)]:
    for name in re.findall(r"\b((?:parley|process)_[a-z_]+)\b", text):
        if name not in known:
            errors.append(f"{where}: unknown metric {name}")

with open(rules_path, "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (title, e) in enumerate(exprs):
        e = e.replace("$__rate_interval", "5m").replace("$__interval", "1m")
        e = re.sub(r"\$\{?(\w+)\}?", ".*", e)
        f.write(f"      - record: dashboard_query_{i}\n        expr: {json.dumps(e)}\n")
for e in errors:
    print("dashboard:", e, file=sys.stderr)
print(f"{len(exprs)} queries, {len(ids)} panels")
sys.exit(1 if errors else 0)
PY
  "$promtool" check rules --lint=none "$tmp/dashboard_rules.yml"
}
step check_dashboard

if [ "$failed" -ne 0 ]; then
  echo "check_deploy: FAILED" >&2
  exit 1
fi
echo "check_deploy: all deploy checks passed"
