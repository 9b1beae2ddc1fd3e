# W7 "backlog" (issue 14, item 7), sourced by tests/bench/run after lib.sh
# and start_dns/start_sink. A relay with a large deferred backlog for a
# dead MX (tests/bench/deadmx.py: 421 at greeting, counts connections),
# measured step by step; each step logs one "W7 <step>:" line and writes
# $W7_OUT/<step>.json for report.py. Every relay here runs the bench
# manifest with default queue settings, in a directory of its own.
#
# Counts and limits (environment):
#   W7_BACKLOG=1000000          messages filled for the dead MX
#   W7_FILL_DEADLINE=720        seconds; the fill stops here (what was queued is reported)
#   W7_SETTLE=300               seconds to wait for every queued message's first attempt
#   W7_FRESH=20000              messages of each fresh-mail run (W1 shape)
#   W7_RUN_TIMEOUT=300          seconds for a fresh-mail run to reach the sink
#   W7_MIX=50000                messages of the spool-space run (1 % to the dead MX)
#   W7_HANDOFF=100000           messages queued on relay A for the hand-off
#   W7_HANDOFF_DEADLINE=120     A's --drain-deadline, seconds
#   W7_READY_TIMEOUT=600        seconds to wait for the restarted relay

W7_BACKLOG=${W7_BACKLOG:-1000000}
W7_FILL_DEADLINE=${W7_FILL_DEADLINE:-720}
W7_SETTLE=${W7_SETTLE:-300}
W7_FRESH=${W7_FRESH:-20000}
W7_RUN_TIMEOUT=${W7_RUN_TIMEOUT:-300}
W7_MIX=${W7_MIX:-50000}
W7_HANDOFF=${W7_HANDOFF:-100000}
W7_HANDOFF_DEADLINE=${W7_HANDOFF_DEADLINE:-120}
W7_READY_TIMEOUT=${W7_READY_TIMEOUT:-600}
W7_OUT="$TMP/w7"
DEAD_DOMAIN=dead.test

declare -A W7_SMTP W7_HTTP W7_PID

# Before start_dns: the dead MX's address and its domain's records.
w7_dns() {
  DEAD_IP=$(free_ip25 3) || die "no free 127.0.0.x:25 for the dead MX"
  DNS_EXTRA+=("--mx-host=$DEAD_DOMAIN,mx1.$DEAD_DOMAIN,10" "--host-record=mx1.$DEAD_DOMAIN,$DEAD_IP")
}

w7_record() { # step key=value...: $W7_OUT/step.json, numbers as numbers
  local step=$1; shift
  python3 - "$W7_OUT/$step.json" "$@" <<'PY'
import json, sys
def val(v):
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return None if v == "" else v
d = {}
for kv in sys.argv[2:]:
    k, _, v = kv.partition("=")
    d[k] = val(v)
json.dump(d, open(sys.argv[1], "w"), indent=1)
PY
}

calc() { awk "BEGIN { printf \"%.3f\", ($*) }"; }
is() { awk "BEGIN { exit !($*) }"; }

# w7_metric NAME METRIC [LABEL]: the sum of METRIC's series (those whose
# labels contain LABEL) from relay NAME's /metrics; empty when absent.
w7_metric() {
  curl -s --max-time 20 "http://127.0.0.1:${W7_HTTP[$1]}/metrics" | awk -v m="$2" -v l="${3:-}" '
    ($1 == m || index($1, m "{") == 1) && (l == "" || index($1, l) > 0) { s += $2; f = 1 }
    END { if (f) printf "%.0f\n", s }'
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
dead_count() { cat "$W7_OUT/deadmx.count" 2>/dev/null || echo 0; }

w7_start_deadmx() {
  start_group "$W7_OUT/deadmx.out" python3 "$ROOT/tests/bench/deadmx.py" "$DEAD_IP:25" "$W7_OUT/deadmx.count"
  DEADMX_PGID=$LAST_PID
  local i
  for i in $(seq 1 100); do grep -q '^ready' "$W7_OUT/deadmx.out" && break; sleep 0.1; done
  grep -q '^ready' "$W7_OUT/deadmx.out" || die "the dead MX did not start: $(cat "$W7_OUT/deadmx.out")"
  log "W7 dead MX (421 at greeting) on $DEAD_IP:25 for $DEAD_DOMAIN"
}

# w7_start NAME [flags...]: relay NAME on $TMP/w7-NAME (spool kept across
# restarts, ports too), waiting for its 220.
w7_start() {
  local name=$1; shift
  local dir="$TMP/w7-$name"
  mkdir -p "$dir/spool"
  [ -f "$dir/manifests/relay.yaml" ] || bench_manifest "$dir/manifests"
  [ -n "${W7_SMTP[$name]:-}" ] || W7_SMTP[$name]=$(free_port)
  [ -n "${W7_HTTP[$name]:-}" ] || W7_HTTP[$name]=$(free_port)
  start_group "$dir/relay.log" "$MR" run --manifests "$dir/manifests" \
    --listen "smtp=127.0.0.1:${W7_SMTP[$name]}" --spool "$dir/spool" \
    --http "127.0.0.1:${W7_HTTP[$name]}" --dns "127.0.0.1:$DNS_PORT" "$@"
  W7_PID[$name]=$LAST_PID
}

w7_kill() { # NAME: SIGKILL (no drain), wait until gone
  local pid=${W7_PID[$1]} i
  # (bash's "Killed" job notice goes to the group's stderr)
  {
    kill -KILL "$pid" || true
    for i in $(seq 1 100); do kill -0 "$pid" || break; sleep 0.1; done
    wait "$pid" || true
  } 2>/dev/null
}

sink_quiet() {
  local c1 c2
  c1=$(sink_count); sleep 0.5; c2=$(sink_count)
  while [ "$c1" != "$c2" ]; do c1=$c2; sleep 0.5; c2=$(sink_count); done
}

# w7_fresh NAME STEP: one W1-shaped run (smtp-source -s 20, a connection
# per message, 1 KiB) of W7_FRESH messages to the working MX. Records
# end-to-end msgs/s (until the sink has them all) and accepted msgs/s
# (until smtp-source is done).
w7_fresh() {
  local name=$1 step=$2 n=$W7_FRESH base t0 ta t1 got timed_out=0
  sink_quiet
  base=$(sink_count)
  t0=$(now)
  smtp-source -s 20 -m "$n" -l 1024 -f a@bench.test -t b@example.test "127.0.0.1:${W7_SMTP[$name]}" \
    >>"$W7_OUT/smtp-source.log" 2>&1 || log "smtp-source exited non-zero ($step)"
  ta=$(now)
  while :; do
    got=$(( $(sink_count) - base ))
    [ "$got" -ge "$n" ] && break
    if is "$(now) - $t0 > $W7_RUN_TIMEOUT"; then timed_out=1; break; fi
    sleep 0.02
  done
  t1=$(now)
  local e2e acc
  e2e=$(calc "$got / ($t1 - $t0)" | cut -d. -f1)
  acc=$(calc "$n / ($ta - $t0)" | cut -d. -f1)
  w7_record "$step" messages="$n" delivered="$got" seconds="$(calc "$t1 - $t0")" \
    e2e_rate="$e2e" accepted_rate="$acc" timed_out="$timed_out"
  log "W7 $step: $e2e msgs/s end to end, $acc msgs/s accepted ($got of $n at the sink$([ "$timed_out" = 1 ] && echo ", TIMED OUT after ${W7_RUN_TIMEOUT}s"))"
}

# w7_fill NAME STEP N DEADLINE: N messages for the dead MX over 20
# sessions, stopped at DEADLINE seconds; progress every 30 s. Sets
# FILL_ACCEPTED and FILL_CAPPED.
w7_fill() {
  local name=$1 step=$2 n=$3 deadline=$4
  local a0 c0 t0 t1 next pid a c
  a0=$(w7_metric "$name" mailrelay_messages_accepted_total); c0=$(dead_count)
  t0=$(now); next=30
  : >"$W7_OUT/$step-trace.tsv"
  start_group "$W7_OUT/$step-source.log" smtp-source -s 20 -m "$n" -l 1024 -f a@bench.test \
    -t "user@$DEAD_DOMAIN" "127.0.0.1:${W7_SMTP[$name]}"
  pid=$LAST_PID
  FILL_CAPPED=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    local el; el=$(calc "$(now) - $t0")
    if is "$el >= $next"; then
      a=$(( $(w7_metric "$name" mailrelay_messages_accepted_total) - a0 )); c=$(( $(dead_count) - c0 ))
      printf '%s\t%s\t%s\t%s\n' "${el%.*}" "$a" "$c" "$(rss_kib "${W7_PID[$name]}")" >>"$W7_OUT/$step-trace.tsv"
      log "W7 $step: ${el%.*} s, $a accepted, $c connections to the dead MX, RSS $(rss_kib "${W7_PID[$name]}") KiB"
      next=$((next + 30))
    fi
    if is "$el >= $deadline"; then
      kill -TERM -- "-$pid" 2>/dev/null || true
      FILL_CAPPED=1
      break
    fi
  done
  { wait "$pid" || true; } 2>/dev/null
  t1=$(now)
  FILL_ACCEPTED=$(( $(w7_metric "$name" mailrelay_messages_accepted_total) - a0 ))
  FILL_SECS=$(calc "$t1 - $t0")
  FILL_CONNS=$(( $(dead_count) - c0 ))
  log "W7 $step: $FILL_ACCEPTED of $n accepted in ${FILL_SECS%.*} s ($(calc "$FILL_ACCEPTED / $FILL_SECS" | cut -d. -f1) msgs/s)$([ "$FILL_CAPPED" = 1 ] && echo ", stopped at the ${deadline}s deadline"); $FILL_CONNS connections to the dead MX so far"
}

# w7_settle NAME: until no recipient is pending (each queued message has
# had its first attempt) or W7_SETTLE seconds; then the gauges' next
# refresh (every 5 s). Sets SETTLE_SECS, SETTLE_PENDING.
w7_settle() {
  local name=$1 t0 p
  t0=$(now)
  while :; do
    p=$(w7_metric "$name" mailrelay_queue_recipients 'state="pending"')
    [ "${p:-1}" = 0 ] && break
    is "$(now) - $t0 > $W7_SETTLE" && break
    sleep 1
  done
  sleep 6
  SETTLE_PENDING=$(w7_metric "$name" mailrelay_queue_recipients 'state="pending"')
  SETTLE_SECS=$(calc "$(now) - $t0")
}

# Restart-to-ready: SIGKILL (a crash, or the kubelet after the grace
# period: no drain, no hand-off), start on the same spool and ports, and
# time until /readyz answers 200 and an SMTP client gets 220.
w7_restart() {
  local name=$1 step=$2 t0 out
  w7_kill "$name"
  t0=$(now)
  w7_start "$name"
  out=$(python3 - "${W7_SMTP[$name]}" "${W7_HTTP[$name]}" "$t0" "$W7_READY_TIMEOUT" <<'PY'
import json, socket, sys, time, urllib.request
smtp, http, t0, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
ready = greeting = None
while (ready is None or greeting is None) and time.time() - t0 < limit:
    if ready is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=2) as r:
                if r.status == 200:
                    ready = time.time() - t0
        except OSError:
            pass
    if greeting is None:
        try:
            with socket.create_connection(("127.0.0.1", smtp), timeout=5) as s:
                if s.recv(512).startswith(b"220"):
                    greeting = time.time() - t0
                s.sendall(b"QUIT\r\n")
        except OSError:
            pass
    time.sleep(0.01)
both = None if ready is None or greeting is None else max(ready, greeting)
print(json.dumps({"readyz_s": ready, "greeting_s": greeting, "ready_s": both}))
PY
)
  echo "$out" >"$W7_OUT/$step.json"
  log "W7 $step: $out (SIGKILL, then start on the same spool; ready = /readyz 200 and SMTP 220)"
}

w7_spool_files() { # NAME -> "disk_bytes segments active_segment_bytes"
  local q="$TMP/w7-$1/spool/queue" last
  last=$(ls "$q" | grep '^seg-.*\.log$' | sort | tail -n1)
  echo "$(du -sb "$q" | cut -f1) $(ls "$q" | grep -c '^seg-.*\.log$') $(stat -c %s "$q/$last" 2>/dev/null || echo 0)"
}

w7_handoff() {
  local n=$W7_HANDOFF secret="$W7_OUT/handoff-secret" pa pb
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret"
  pa=$(free_port); pb=$(free_port)
  w7_start hb --handoff-listen "127.0.0.1:$pb" --handoff-secret-file "$secret" --peer "127.0.0.1:$pa"
  w7_start ha --handoff-listen "127.0.0.1:$pa" --handoff-secret-file "$secret" --peer "127.0.0.1:$pb" \
    --drain-accept 0s --drain-sessions 5s --drain-deliver 0s --drain-deadline "${W7_HANDOFF_DEADLINE}s"
  wait_greeting 127.0.0.1 "${W7_SMTP[hb]}" "relay B"
  wait_greeting 127.0.0.1 "${W7_SMTP[ha]}" "relay A"
  w7_fill ha handoff-fill "$n" "$W7_FILL_DEADLINE"
  w7_settle ha
  local queued t0 i line handed left received log_a="$TMP/w7-ha/relay.log"
  queued=$(w7_metric ha mailrelay_spool_messages)
  log "W7 handoff: $queued queued on relay A; SIGTERM to A (drain: accept 0s, deliver 0s, deadline ${W7_HANDOFF_DEADLINE}s)"
  t0=$(now)
  kill -TERM "${W7_PID[ha]}"
  # A logs a line per message handed off: look at the end of its log only.
  for i in $(seq 1 $(( (W7_HANDOFF_DEADLINE + 120) * 4 ))); do
    kill -0 "${W7_PID[ha]}" 2>/dev/null || break
    tail -c 4096 "$log_a" | grep -q 'drained' && break
    sleep 0.25
  done
  for i in $(seq 1 300); do kill -0 "${W7_PID[ha]}" 2>/dev/null || break; sleep 0.1; done
  line=$(grep 'drained' "$log_a" | tail -n1 || true)
  handed=$(sed -n 's/.*handed_off=\([0-9]*\).*/\1/p' <<<"$line")
  left=$(sed -n 's/.*left=\([0-9]*\).*/\1/p' <<<"$line")
  received=$(w7_metric hb mailrelay_handoff_messages_total 'direction="received"')
  # Times from A's own log (UTC, microseconds): SIGTERM -> "handing the
  # queue off" -> "drained".
  local times secs hsecs rate
  times=$(python3 - "$log_a" "$t0" <<'PY'
import datetime, sys
def at(line):
    return datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
hand = end = None
for line in open(sys.argv[1], errors="replace"):
    if "handing the queue off" in line:
        hand = at(line)
    elif "drain" in line and "drained" in line:
        end = at(line)
t0 = float(sys.argv[2])
end = end or t0
print(f"{end - t0:.3f} {end - (hand or t0):.3f}")
PY
)
  read -r secs hsecs <<<"$times"
  rate=$(calc "${received:-0} / ($hsecs > 0 ? $hsecs : 1)" | cut -d. -f1)
  w7_record handoff queued="$queued" received_by_b="${received:-0}" left_on_a="$left" \
    log_handed_off="$handed" seconds_sigterm_to_drained="$secs" seconds_handing="$hsecs" rate="$rate" \
    deadline="$W7_HANDOFF_DEADLINE" drain_line="$line"
  log "W7 handoff: B took ${received:-0} of $queued in $hsecs s of hand-off ($secs s from SIGTERM to A's drained line): $rate msgs/s; A left ${left:-?} (its log says handed_off=${handed:-?})"
  w7_kill hb
}

w7_mix() {
  local n=$W7_MIX chunk=1000 dead live i base t0 waited
  [ "$n" -lt "$chunk" ] && chunk=$n
  dead=$((chunk / 100)); [ "$dead" -ge 1 ] || dead=1
  live=$((chunk - dead))
  w7_start mix
  wait_greeting 127.0.0.1 "${W7_SMTP[mix]}" "relay (mix)"
  sink_quiet
  base=$(sink_count)
  local chunks=$((n / chunk)) hp="127.0.0.1:${W7_SMTP[mix]}"
  for i in $(seq 1 "$chunks"); do
    smtp-source -s 1 -m "$dead" -l 1024 -f a@bench.test -t "user@$DEAD_DOMAIN" "$hp" >>"$W7_OUT/smtp-source.log" 2>&1 || true
    smtp-source -s 20 -m "$live" -l 1024 -f a@bench.test -t b@example.test "$hp" >>"$W7_OUT/smtp-source.log" 2>&1 || true
  done
  local want_live=$((chunks * live)) want_dead=$((chunks * dead)) q
  t0=$(now)
  while [ $(( $(sink_count) - base )) -lt "$want_live" ] && is "$(now) - $t0 < $W7_RUN_TIMEOUT"; do sleep 0.5; done
  # Removals written, segments freed, gauges refreshed (every 5 s).
  while :; do
    sleep 6
    q=$(w7_metric mix mailrelay_spool_messages)
    [ "${q:-0}" -le "$want_dead" ] && break
    is "$(now) - $t0 > $W7_RUN_TIMEOUT" && break
  done
  local live_metric=mailrelay_spool_live_bytes live_bytes files
  live_bytes=$(w7_metric mix "$live_metric")
  if [ -z "$live_bytes" ]; then live_metric=mailrelay_spool_bytes; live_bytes=$(w7_metric mix "$live_metric"); fi
  # The relay's own figure of its spool on disk, when it has one (else empty).
  local disk_metric; disk_metric=$(w7_metric mix mailrelay_spool_disk_bytes)
  files=$(w7_spool_files mix)
  read -r disk segs active <<<"$files"
  local ratio ratio_closed
  ratio=$(calc "$disk / ($live_bytes > 0 ? $live_bytes : 1)")
  ratio_closed=$(calc "($disk - $active) / ($live_bytes > 0 ? $live_bytes : 1)")
  w7_record spool-mix messages="$((chunks * chunk))" to_dead="$want_dead" delivered="$(( $(sink_count) - base ))" \
    queued="$q" disk_bytes="$disk" segments="$segs" active_segment_bytes="$active" \
    live_bytes="$live_bytes" live_metric="$live_metric" disk_bytes_metric="$disk_metric" \
    ratio="$ratio" ratio_without_active="$ratio_closed"
  log "W7 spool-mix: $((chunks * chunk)) messages, $want_dead to the dead MX: spool queue dir $disk bytes in $segs segment(s) (active $active), live $live_bytes bytes ($live_metric, $q queued): ${ratio} x (${ratio_closed} x without the active segment)"
  w7_kill mix
}

w7_run() {
  mkdir -p "$W7_OUT"
  log "W7: backlog $W7_BACKLOG (fill deadline ${W7_FILL_DEADLINE}s), fresh runs of $W7_FRESH, mix $W7_MIX, hand-off $W7_HANDOFF (deadline ${W7_HANDOFF_DEADLINE}s)"
  # W4 stops smtp-sink (its own sink takes the address); W7 needs it back.
  if ! kill -0 "$SINK_PGID" 2>/dev/null; then
    local i
    for i in $(seq 1 50); do [ -z "$(ss -Hltn "src $SINK_IP and sport = :25")" ] && break; sleep 0.1; done
    start_sink
  fi
  w7_start_deadmx

  # One relay process throughout: empty, then with the backlog.
  w7_start bl
  wait_greeting 127.0.0.1 "${W7_SMTP[bl]}" "relay (backlog)"
  local saved=$W7_FRESH
  W7_FRESH=$(( saved / 10 > 0 ? saved / 10 : 1 )); w7_fresh bl warmup; W7_FRESH=$saved
  w7_fresh bl fresh-empty
  sleep 6
  local rss0; rss0=$(rss_kib "${W7_PID[bl]}")
  log "W7 rss-empty: $rss0 KiB (after the warm-up and the fresh-mail run)"

  w7_fill bl fill "$W7_BACKLOG" "$W7_FILL_DEADLINE"
  local fill_end_conns=$FILL_CONNS
  w7_settle bl
  local queued rss1 conns
  queued=$(w7_metric bl mailrelay_spool_messages)
  rss1=$(rss_kib "${W7_PID[bl]}")
  conns=$(( $(dead_count) ))
  w7_record fill requested="$W7_BACKLOG" accepted="$FILL_ACCEPTED" seconds="$FILL_SECS" \
    rate="$(calc "$FILL_ACCEPTED / $FILL_SECS" | cut -d. -f1)" capped="$FILL_CAPPED" deadline="$W7_FILL_DEADLINE" \
    queued="$queued" pending_after_settle="$SETTLE_PENDING" settle_seconds="$SETTLE_SECS" \
    dead_mx_connections="$conns" dead_mx_connections_at_fill_end="$fill_end_conns" \
    trace="$(tr '\t\n' ',;' <"$W7_OUT/fill-trace.tsv")"
  log "W7 dead-mx-connections: $conns during the fill of $queued queued messages ($fill_end_conns when the last was accepted; settled in ${SETTLE_SECS%.*} s, ${SETTLE_PENDING:-?} still pending)"
  w7_record memory rss_empty_kib="$rss0" rss_backlog_kib="$rss1" queued="$queued" \
    bytes_per_message="$(calc "($rss1 - $rss0) * 1024 / ($queued > 0 ? $queued : 1)" | cut -d. -f1)"
  log "W7 memory: RSS $rss0 -> $rss1 KiB with $queued queued: $(calc "($rss1 - $rss0) * 1024 / ($queued > 0 ? $queued : 1)" | cut -d. -f1) bytes per queued message"

  w7_fresh bl fresh-backlog
  local ratios
  ratios=$(python3 - "$W7_OUT/fresh-empty.json" "$W7_OUT/fresh-backlog.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
print("%.2f %.2f" % (b["e2e_rate"] / max(a["e2e_rate"], 1), b["accepted_rate"] / max(a["accepted_rate"], 1)))
PY
)
  log "W7 fresh-ratio: ${ratios% *} end to end, ${ratios#* } accepted (with the backlog / empty, same process)"

  w7_restart bl restart
  local files; files=$(w7_spool_files bl)
  log "W7 backlog spool: $files (queue dir bytes, segments, active segment bytes)"
  w7_kill bl
  rm -rf "$TMP/w7-bl/spool"

  w7_mix
  rm -rf "$TMP/w7-mix/spool"
  w7_handoff
  rm -rf "$TMP/w7-ha/spool" "$TMP/w7-hb/spool"
  kill -TERM -- "-$DEADMX_PGID" 2>/dev/null || true
}
