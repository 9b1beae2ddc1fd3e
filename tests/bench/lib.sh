# Shared pieces of the benchmark scripts (run, smoke, profile): peers in
# their own process groups, mailrelay and Postfix configured as equivalent
# relays for example.test, drained-queue checks and the sink's counter.
# Source it after setting ROOT and TMP; call bench_cleanup on EXIT.

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
now() { date +%s.%N; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PGIDS=()
POSTFIX_DIR="$TMP/postfix"

bench_cleanup() {
  set +e
  if [ -f "$POSTFIX_DIR/main.cf" ] && [ -n "${POSTFIX_STARTED:-}" ]; then
    postfix -c "$POSTFIX_DIR" stop >/dev/null 2>&1
    sleep 1
  fi
  for g in "${PGIDS[@]}"; do kill -TERM -- "-$g" 2>/dev/null; done
  sleep 0.5
  for g in "${PGIDS[@]}"; do kill -KILL -- "-$g" 2>/dev/null; done
  wait 2>/dev/null
  log "logs kept in $TMP"
}

# Start a command in its own process group (setsid), remember the group.
start_group() { # logfile cmd...
  local logf=$1; shift
  setsid "$@" >"$logf" 2>&1 &
  LAST_PID=$!
  PGIDS+=("$LAST_PID")
}

wait_greeting() { # host port what
  local i
  for i in $(seq 1 150); do
    if python3 - "$1" "$2" <<'PY' 2>/dev/null; then return 0; fi
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
b = s.recv(512)
s.sendall(b"QUIT\r\n")
sys.exit(0 if b.startswith(b"220") else 1)
PY
    sleep 0.2
  done
  die "$3 did not greet with 220 on $1:$2"
}

# The sink listens on 127.0.0.2:25 unless something else already does
# (another process's sink there would share the connections and the
# count): then the first free of 127.0.0.12, .22, ... is used.
pick_sink_ip() {
  SINK_IP=$(free_ip25 2) || die "no free 127.0.0.x:25 for the sink"
  SINK_ADDR=$SINK_IP:25
}

# free_ip25 LAST: the first of 127.0.0.LAST, .LAST+10, ... where nothing
# listens on port 25 (MX delivery always goes to port 25).
free_ip25() {
  local n ip
  for n in 0 10 20 30 40 50 60; do
    ip=127.0.0.$(($1 + n))
    if [ -z "$(ss -Hltn "src $ip and sport = :25")" ] && [ -z "$(ss -Hltn "src 0.0.0.0 and sport = :25")" ]; then
      echo "$ip"; return 0
    fi
  done
  return 1
}

# DNS_EXTRA: more dnsmasq options (W7 adds its dead MX's domain).
DNS_EXTRA=()
start_dns() {
  DNS_PORT=$(free_port)
  start_group "$TMP/dnsmasq.log" dnsmasq --no-daemon --conf-file=/dev/null --no-resolv --no-hosts \
    --port="$DNS_PORT" --listen-address=127.0.0.1 --bind-interfaces --user=root \
    --local=/test/ --mx-host=example.test,mx1.example.test,10 \
    --host-record=mx1.example.test,"$SINK_IP" "${DNS_EXTRA[@]}"
  sleep 0.5
  log "dnsmasq on 127.0.0.1:$DNS_PORT"
}

start_sink() {
  SINK_OUT="$TMP/sink.out"
  start_group "$SINK_OUT" smtp-sink -c -u postfix "$SINK_ADDR" 1024
  SINK_PGID=$LAST_PID
  wait_greeting "$SINK_IP" 25 smtp-sink
  log "smtp-sink on $SINK_ADDR"
}

sink_count() {
  local n
  n=$(tail -c 200 "$SINK_OUT" | tr '\r' '\n' | grep -o 'mesg=[0-9]*' | tail -n1 | cut -d= -f2)
  echo "${n:-0}"
}

# BENCH_PROFILE: release (figures) or dev (smoke: quick to build).
BENCH_PROFILE=${BENCH_PROFILE:-release}
profile_dir() { if [ "$BENCH_PROFILE" = dev ]; then echo debug; else echo "$BENCH_PROFILE"; fi; }

# Where cargo puts builds: CARGO_TARGET_DIR when set, as cargo reads it.
target_dir() { echo "${CARGO_TARGET_DIR:-$ROOT/target}"; }

# MAILRELAY_BIN: a binary to measure as it is (another build), no build.
build_mailrelay() {
  if [ -n "${MAILRELAY_BIN:-}" ]; then
    MR=$MAILRELAY_BIN
    [ -x "$MR" ] || die "MAILRELAY_BIN=$MR is not an executable"
    log "using $MR (MAILRELAY_BIN)"; return
  fi
  MR=$(target_dir)/$(profile_dir)/mailrelay
  if [ -n "${BENCH_NO_BUILD:-}" ] && [ -x "$MR" ]; then log "using $MR as built"; return; fi
  log "building mailrelay ($BENCH_PROFILE)"
  cargo build --profile "$BENCH_PROFILE" -p mailrelay >"$TMP/build.log" 2>&1 || { tail -20 "$TMP/build.log" >&2; die "cargo build"; }
  MR=$(target_dir)/$(profile_dir)/mailrelay
}

# start_mailrelay [wrapper...]: the relay from a Relay manifest that lets
# 127.0.0.0/8 relay, with per-IP limits out of the way.
start_mailrelay() {
  MR_PORT=$(free_port)
  MR_HTTP=$(free_port)
  MR_SPOOL="$TMP/mr-spool"
  mkdir -p "$MR_SPOOL"
  bench_manifest "$TMP/manifests"
  [ "${BENCH_EVENTS_WEBHOOK:-}" != 1 ] || [ -n "${EV_PID:-}" ] || start_event_receiver
  "$MR" check --manifests "$TMP/manifests" >&2 || die "mailrelay check rejected the bench manifests"
  start_group "$TMP/mailrelay.log" "$@" "$MR" run --manifests "$TMP/manifests" \
    --listen "smtp=127.0.0.1:$MR_PORT" --spool "$MR_SPOOL" --http "127.0.0.1:$MR_HTTP" \
    --dns "127.0.0.1:$DNS_PORT"
  MR_PID=$LAST_PID
  wait_greeting 127.0.0.1 "$MR_PORT" mailrelay
  log "mailrelay (pid $MR_PID) on 127.0.0.1:$MR_PORT, http 127.0.0.1:$MR_HTTP"
}

# start_mailrelay_webhook: a second relay like the first but for one event
# webhook (run --webhook-cost), on its own ports and spool.
start_mailrelay_webhook() {
  MRW_PORT=$(free_port)
  MRW_SPOOL="$TMP/mrw-spool"
  mkdir -p "$MRW_SPOOL"
  BENCH_EVENTS_WEBHOOK=1 bench_manifest "$TMP/manifests-webhook"
  [ -n "${EV_PID:-}" ] || start_event_receiver
  "$MR" check --manifests "$TMP/manifests-webhook" >&2 || die "mailrelay check rejected the webhook bench manifests"
  start_group "$TMP/mailrelay-webhook.log" "$MR" run --manifests "$TMP/manifests-webhook" \
    --listen "smtp=127.0.0.1:$MRW_PORT" --spool "$MRW_SPOOL" --http "127.0.0.1:$(free_port)" \
    --dns "127.0.0.1:$DNS_PORT"
  MRW_PID=$LAST_PID
  wait_greeting 127.0.0.1 "$MRW_PORT" mailrelay-webhook
  log "mailrelay with one event webhook on 127.0.0.1:$MRW_PORT"
}

# webhook_settled: once the receiver's count stops moving, the events it
# got, for the report (a webhook that fell behind is not a free one).
webhook_settled() {
  local c1 c2
  c1=$(cat "$TMP/events-received" 2>/dev/null || echo 0); sleep 2
  c2=$(cat "$TMP/events-received" 2>/dev/null || echo 0)
  while [ "$c1" != "$c2" ]; do c1=$c2; sleep 2; c2=$(cat "$TMP/events-received" 2>/dev/null || echo 0); done
  WEBHOOK_EVENTS=$c2
  log "event webhook: $WEBHOOK_EVENTS events received"
}

# cpu_ticks PID: user + system CPU time the process used so far, in clock
# ticks (0 when it is gone).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# bench_manifest DIR: the Relay every benchmark relay runs (default queue
# settings: W7 measures the defaults).
bench_manifest() {
  mkdir -p "$1"
  cat >"$1/relay.yaml" <<'YAML'
apiVersion: mailrelay.io/v1alpha1
kind: Relay
metadata:
  name: bench
spec:
  hostname: mx.bench.test
  listeners:
    - name: smtp
  trustedNetworks:
    - 127.0.0.0/8
  relayFromTrustedNetworks: true
  limits:
    maxConnections: 20000
    maxConnectionsPerIp: 20000
    messagesPerMinutePerIp: 10000000
YAML
  if [ "${BENCH_EVENTS_WEBHOOK:-}" = 1 ]; then
    EV_PORT=${EV_PORT:-$(free_port)}
    cat >>"$1/relay.yaml" <<YAML
  events:
    webhooks:
      - url: http://127.0.0.1:$EV_PORT/events
        secret: {name: bench-events, key: signing}
---
apiVersion: v1
kind: Secret
metadata:
  name: bench-events
stringData:
  signing: bench-signing-key
YAML
  fi
}

# BENCH_EVENTS_WEBHOOK=1: every event also goes to one webhook (issue 16's
# cost): a receiver that reads each request and answers 200, counting the
# events it got into $TMP/events-received. HTTP/1.1, so the relay's
# sender keeps its connection; a thread per connection, so a second
# relay's sender (tests/bench scripts that start two) is not kept waiting.
start_event_receiver() {
  start_group "$TMP/events-receiver.log" python3 -c '
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
count, out, lock = 0, sys.argv[2], threading.Lock()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps the connection, as production receivers do
    def do_POST(self):
        global count
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with lock:
            count += body.count(b"\"version\":1")
            open(out, "w").write(str(count))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
' "$EV_PORT" "$TMP/events-received"
  EV_PID=$LAST_PID
  local i
  for i in $(seq 1 50); do
    python3 -c "import socket,sys; socket.create_connection((\"127.0.0.1\", $EV_PORT), timeout=1)" 2>/dev/null && break
    sleep 0.1
  done
  log "event webhook receiver on 127.0.0.1:$EV_PORT"
}

start_postfix() {
  PF_PORT=2525
  [ -z "$(ss -Hltn "sport = :$PF_PORT")" ] || die "port $PF_PORT is taken: $(ss -Hltnp "sport = :$PF_PORT")"
  mkdir -p "$POSTFIX_DIR" "$TMP/pf-queue" "$TMP/pf-data"
  chown postfix: "$TMP/pf-data"
  cat >"$POSTFIX_DIR/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $TMP/pf-queue
data_directory = $TMP/pf-data
myhostname = mx.postfix.bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = example.test
transport_maps = inline:{ example.test=smtp:[$SINK_IP]:25 }
alias_maps =
alias_database =
local_recipient_maps =
smtp_tls_security_level = none
smtpd_tls_security_level = none
default_process_limit = ${POSTFIX_PROCESS_LIMIT:-100}
maillog_file = $TMP/postfix.maillog
maillog_file_prefixes = /var, /dev/stdout, $TMP
CF
  # Debian's master.cf with chroot off everywhere and smtpd on 127.0.0.1:2525.
  awk -v port="$PF_PORT" '
    /^smtp[ \t]+inet/ { print "127.0.0.1:" port " inet n - n - - smtpd"; next }
    /^[a-z0-9]/ && NF >= 8 { $5 = "n"; print; next }
    { print }' /etc/postfix/master.cf >"$POSTFIX_DIR/master.cf"
  if ! postfix -c "$POSTFIX_DIR" check >"$TMP/postfix-check.log" 2>&1; then
    script -qc "postfix -c $POSTFIX_DIR check" /dev/null >&2 || true
    die "postfix check"
  fi
  start_group "$TMP/postfix-fg.log" postfix -c "$POSTFIX_DIR" start-fg
  POSTFIX_PID=$LAST_PID
  POSTFIX_STARTED=1
  wait_greeting 127.0.0.1 "$PF_PORT" postfix
  log "postfix on 127.0.0.1:$PF_PORT ($POSTFIX_DIR)"
}

queue_empty() { # which
  case "$1" in
    postfix) postqueue -c "$POSTFIX_DIR" -p 2>&1 | grep -q "Mail queue is empty" ;;
    mailrelay) "$MR" queue --spool "$MR_SPOOL" list 2>&1 | grep -q "Mail queue is empty" ;;
    mailrelay-webhook) "$MR" queue --spool "$MRW_SPOOL" list 2>&1 | grep -q "Mail queue is empty" ;;
    *) return 0 ;;
  esac
}

wait_drained() { # relays...
  local w i c1 c2
  for w in "$@"; do
    for i in $(seq 1 600); do queue_empty "$w" && break; sleep 0.2; done
    queue_empty "$w" || die "$w queue did not drain"
  done
  # and the sink counter is quiet
  c1=$(sink_count); sleep 0.3; c2=$(sink_count)
  while [ "$c1" != "$c2" ]; do c1=$c2; sleep 0.3; c2=$(sink_count); done
}

# one_run TARGET SHAPE MSGS SIZE -> prints msgs/s, or "fail" when the sink
# did not get every message within RUN_TIMEOUT seconds.
one_run() {
  local target=$1 shape=$2 msgs=$3 size=$4 hostport
  case "$target" in
    postfix) hostport=127.0.0.1:$PF_PORT ;;
    mailrelay) hostport=127.0.0.1:$MR_PORT ;;
    mailrelay-webhook) hostport=127.0.0.1:$MRW_PORT ;;
    loopback) hostport=$SINK_ADDR ;;
  esac
  local dflag=()
  [ "$shape" = reuse ] && dflag=(-d)
  wait_drained ${RELAYS:-postfix mailrelay}
  local base t0 t1 goal n deadline
  base=$(sink_count)
  goal=$((base + msgs))
  t0=$(now)
  smtp-source "${dflag[@]}" -s 20 -m "$msgs" -l "$size" -f a@bench.test -t b@example.test "$hostport" \
    >>"$TMP/smtp-source.log" 2>&1 || log "smtp-source exited non-zero against $target"
  deadline=$(python3 -c "print($t0 + ${RUN_TIMEOUT:-240})")
  while :; do
    n=$(sink_count)
    [ "$n" -ge "$goal" ] && break
    if python3 -c "import sys,time; sys.exit(0 if time.time() > $deadline else 1)"; then
      log "$target $shape: timeout, sink got $((n - base)) of $msgs"
      echo fail; return 0
    fi
    sleep 0.02
  done
  t1=$(now)
  python3 -c "print(f'{$msgs / ($t1 - $t0):.0f}')"
}
