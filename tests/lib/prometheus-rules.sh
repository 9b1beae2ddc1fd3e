# The chart's PrometheusRule checked with Debian's promtool: the rules it
# renders (default values, prometheusRule.enabled=true) pass `promtool check
# rules` and the unit tests in charts/mailrelay/tests/prometheus/. Each check
# has a negative control that must fail: a broken expression for `check`,
# a changed threshold for `test`.
#
# Sourced by tests/lib/helm-chart.sh; needs $HELM (install_helm), python3
# with PyYAML (the tests venv) and promtool (install_peers). Entry point:
# check_prometheus_rules OUTDIR.

# Render with `helm template ARGS...` and write the PrometheusRule's spec
# (its `groups`) as a Prometheus rules file to FILE.
render_rule_file() {
  local file=$1
  shift
  chart_render "$ROOT/charts/mailrelay" --set prometheusRule.enabled=true "$@" \
    --show-only templates/prometheusrule.yaml |
    python3 -c '
import sys, yaml
rule = yaml.safe_load(sys.stdin)
if not rule or rule.get("kind") != "PrometheusRule":
    sys.exit("no PrometheusRule in the render")
yaml.safe_dump(rule["spec"], open(sys.argv[1], "w"), sort_keys=False)
' "$file"
}

check_prometheus_rules() {
  local out=$1/prometheus
  local tests="$ROOT/charts/mailrelay/tests/prometheus/alerts.test.yaml"
  command -v promtool >/dev/null ||
    { chart_fail "promtool is missing (Debian package prometheus; tests/lib/deps.sh installs it)"; return 1; }
  mkdir -p "$out"
  render_rule_file "$out/rules.yaml" ||
    { chart_fail "render of the PrometheusRule (prometheusRule.enabled=true)"; return 1; }

  promtool check rules "$out/rules.yaml" ||
    { chart_fail "promtool check rules on the rendered PrometheusRule"; return 1; }
  sed 's/deriv(mailrelay_spool_messages/deriv(mailrelay_spool_messages}/' "$out/rules.yaml" >"$out/broken.yaml"
  cmp -s "$out/rules.yaml" "$out/broken.yaml" &&
    { chart_fail "negative control: could not plant a syntax error in the rules"; return 1; }
  if promtool check rules "$out/broken.yaml" >/dev/null 2>&1; then
    chart_fail "negative control: promtool check rules passed a broken expression"
    return 1
  fi
  chart_pass "promtool check rules: $(grep -c '^  - alert: ' "$out/rules.yaml") alerts (a broken expression is caught)"

  cp "$tests" "$out/alerts.test.yaml"
  (cd "$out" && promtool test rules alerts.test.yaml) ||
    { chart_fail "promtool test rules charts/mailrelay/tests/prometheus/alerts.test.yaml"; return 1; }
  # The control: the same tests against rules with other thresholds fail.
  render_rule_file "$out/rules.yaml" --set-json prometheusRule.spoolDisk.freeRatio=0.01 ||
    { chart_fail "negative control: render with another threshold"; return 1; }
  if (cd "$out" && promtool test rules alerts.test.yaml >/dev/null 2>&1); then
    chart_fail "negative control: the alert unit tests passed with spoolDisk.freeRatio=0.01"
    return 1
  fi
  chart_pass "promtool test rules: every alert fires on its series and stays quiet on the others (a changed threshold is caught)"
}
