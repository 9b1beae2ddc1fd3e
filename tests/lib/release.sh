# shellcheck shell=bash
# The release pipeline (.github/workflows), which cannot run here: the
# workflow files against GitHub's schema, and the version-drift test
# (tests/release/version_drift.py: crates, chart and the release workflow
# agree on one version, and copies with one of them changed are caught).
#
# Sourced by tests/run after `install_python_tools` (check-jsonschema and
# PyYAML in target/tests-venv) and `check_helm_chart` (which installs helm
# as $HELM). Entry point: check_release_pipeline.

release_fail() {
  echo "release: FAIL: $*" >&2
  return 1
}

# check-jsonschema's bundled copy of the workflow schema (no network). The
# control: a workflow whose job has runs_on instead of runs-on is rejected.
check_workflow_schemas() {
  local tmp=$1
  command -v check-jsonschema >/dev/null ||
    { release_fail "check-jsonschema is not on PATH (tests/requirements.txt installs it)"; return 1; }
  check-jsonschema --builtin-schema vendor.github-workflows "$ROOT"/.github/workflows/*.yml ||
    { release_fail "a workflow under .github/workflows does not match GitHub's schema"; return 1; }
  sed 's/^    runs-on:/    runs_on:/' "$ROOT/.github/workflows/ci.yml" >"$tmp/broken.yml"
  grep -q '^    runs_on:' "$tmp/broken.yml" ||
    { release_fail "negative control: could not misspell runs-on in a copy of ci.yml"; return 1; }
  if check-jsonschema --builtin-schema vendor.github-workflows "$tmp/broken.yml" >/dev/null 2>&1; then
    release_fail "negative control: a job with runs_on instead of runs-on passed check-jsonschema"
    return 1
  fi
  echo "release: ok: workflows match the GitHub workflow schema (a misspelt runs-on is caught)"
}

check_release_pipeline() {
  local tmp ok=0
  if [ -z "${HELM:-}" ] || [ ! -x "$HELM" ]; then
    release_fail "no helm (\$HELM is set by check_helm_chart)"
    return 1
  fi
  tmp=$(mktemp -d)
  check_workflow_schemas "$tmp" || ok=1
  rm -rf "$tmp"
  python3 "$ROOT/tests/release/version_drift.py" --helm "$HELM" || ok=1
  [ $ok = 0 ] || { release_fail "the release pipeline has problems (above)"; return 1; }
}
