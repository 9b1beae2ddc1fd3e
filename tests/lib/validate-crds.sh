# The committed CRDs against the official Kubernetes schemas, for the oldest
# and newest versions we support; and a broken copy, which must fail, so the
# check is known to be able to fail. Sourced by tests/run.

validate_crds() {
  local ok=0 v
  for v in 1.31.0 1.37.0; do
    kubernetes-validate -k "$v" --strict --quiet "$ROOT"/crds/generated/*.yaml || ok=1
  done
  local broken
  broken=$(mktemp)
  sed 's/^  scope: Namespaced$/  scope: Namespaced\n  notAField: true/' \
    "$ROOT/crds/generated/relays.mailrelay.io.yaml" > "$broken"
  if kubernetes-validate -k 1.31.0 --strict --quiet "$broken" >/dev/null 2>&1; then
    echo "validate-crds: a CRD with an unknown field passed: the validator is not checking" >&2
    ok=1
  fi
  rm -f "$broken"
  return $ok
}
