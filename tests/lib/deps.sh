# Installs what the test suite needs and is missing: Debian packages for the
# real peers (Postfix, Dovecot, dnsmasq, swaks, Prometheus), a Python venv
# with the schema validator, and cargo-deny. Sourced by tests/run.

# Debian package -> a file it installs that the tests use.
declare -A PEERS=(
  [postfix]=/usr/sbin/smtp-sink
  [swaks]=/usr/bin/swaks
  [dnsmasq]=/usr/sbin/dnsmasq
  [dovecot-lmtpd]=/usr/lib/dovecot/lmtp
  [dovecot-imapd]=/usr/lib/dovecot/imap
  [dovecot-pop3d]=/usr/lib/dovecot/pop3
  [dnsutils]=/usr/bin/dig
  # helm comes out of an npm package's zip (tests/lib/helm-chart.sh)
  [unzip]=/usr/bin/unzip
  # the benchmark smoke test looks for free ports with ss
  [iproute2]=/usr/bin/ss
  # promtool checks the chart's alert rules; prometheus runs the live
  # alert test (operator/tests/e2e/alerts.rs)
  [prometheus]=/usr/bin/promtool
  # swaks needs these for --tls and --tls-on-connect
  [libnet-ssleay-perl]=/usr/share/doc/libnet-ssleay-perl
  [libio-socket-ssl-perl]=/usr/share/perl5/IO/Socket/SSL.pm
  # Prometheus 2.42 for the dashboard's PromQL (operator/tests/e2e/dashboard.rs)
  [prometheus]=/usr/bin/prometheus
  # bind9 signs and serves the DNSSEC test zones of DANE (relay/tests/dane.rs)
  [bind9]=/usr/sbin/named
  [bind9-utils]=/usr/bin/dnssec-signzone
)

install_peers() {
  local missing=()
  for pkg in "${!PEERS[@]}"; do
    [ -e "${PEERS[$pkg]}" ] || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run: missing packages ${missing[*]}; run as root or install them" >&2
    return 1
  fi
  echo "tests/run: installing ${missing[*]}"
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -q >/dev/null
  # The packages' own daemons (prometheus, postfix, dovecot, dnsmasq) must
  # not start and hold ports: the tests start their own, on their own
  # ports. invoke-rc.d and deb-systemd-invoke ask policy-rc.d; 101 = no.
  local policy=/usr/sbin/policy-rc.d own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
  fi
  local status=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
    status=$?
  [ -n "$own_policy" ] && rm -f "$policy"
  [ $status -eq 0 ] || return $status
  # Under systemd the units are still enabled for the next boot.
  if [ -d /run/systemd/system ] && [[ " ${missing[*]} " == *" prometheus "* ]]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  for pkg in "${missing[@]}"; do
    [ -e "${PEERS[$pkg]}" ] || { echo "tests/run: $pkg did not install ${PEERS[$pkg]}" >&2; return 1; }
  done
}

# A venv under target/ (made by this run when absent; never committed).
install_python_tools() {
  VENV="$ROOT/target/tests-venv"
  # Installed again whenever tests/requirements.txt changed since (a copy
  # of it is kept in the venv), so an existing venv gets new tools.
  if [ ! -x "$VENV/bin/kubernetes-validate" ] ||
     ! cmp -s "$ROOT/tests/requirements.txt" "$VENV/requirements.txt"; then
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/tests/requirements.txt"
    cp "$ROOT/tests/requirements.txt" "$VENV/requirements.txt"
  fi
  export PATH="$VENV/bin:$PATH"
}

# cargo-deny for the supply-chain step. Debian has no package of it
# (`apt-cache policy cargo-deny` finds none), so it is built from crates.io
# into target/tools/cargo-deny/ when missing or of another version: about
# 6 minutes on a 2-core machine (374 s measured, crates already downloaded),
# once per fresh checkout.
CARGO_DENY_VERSION=0.20.2
install_cargo_deny() {
  local root="$ROOT/target/tools/cargo-deny"
  if [ ! -x "$root/bin/cargo-deny" ] ||
     [ "$("$root/bin/cargo-deny" --version)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
    echo "tests/run: building cargo-deny $CARGO_DENY_VERSION from crates.io"
    # In cargo's own temporary directory, not the workspace's target dir:
    # its release build would otherwise stay there, unused, for good.
    env -u CARGO_TARGET_DIR cargo install --locked --quiet \
      --root "$root" --version "$CARGO_DENY_VERSION" cargo-deny
  fi
  export PATH="$root/bin:$PATH"
  cargo deny --version
}
