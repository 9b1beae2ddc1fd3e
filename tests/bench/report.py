#!/usr/bin/env python3
"""The benchmark table (Markdown, on stdout) and the result file (JSON) from
the raw results of tests/bench/run. With --smoke it checks instead that
every workload moved every message (exit 1 otherwise) and prints no table."""
import argparse
import glob
import json
import os
import statistics
import sys

DESC = {
    "W1": "1 KiB, 20 sessions, new connection per message",
    "W2": "1 KiB, 20 sessions, reused connections (-d)",
    "W3": "100 KiB, 20 sessions, new connection per message",
}


def med(xs):
    ok = [x for x in xs if x is not None]
    return statistics.median(ok) if ok and len(ok) == len(xs) else None


def f0(x):
    return "fail" if x is None else f"{x:,.0f}"


W7_STEPS = ("warmup", "fresh-empty", "fill", "memory", "fresh-backlog", "restart", "spool-mix", "handoff")


def w7_steps(path):
    """The W7 steps' JSON files (tests/bench/w7.sh), by step name."""
    steps = {}
    for step in W7_STEPS:
        f = os.path.join(path, step + ".json") if path else ""
        if f and os.path.exists(f):
            try:
                steps[step] = json.load(open(f))
            except ValueError:
                steps[step] = None
    return steps


def w7_markdown(w7, failures, smoke):
    """The W7 table; what lost mail or could not run goes into failures."""
    def get(step, key):
        return (w7.get(step) or {}).get(key)

    def num(x, fmt="{:,.0f}"):
        return "n/a" if x is None else fmt.format(x)

    for step in W7_STEPS:
        if step in w7 and w7[step] is None:
            failures.append(f"W7 {step}: no result")
    queued = get("fill", "queued")
    lines = ["| W7 backlog measure | mailrelay | target |", "|---|---|---|"]
    fill = w7.get("fill") or {}
    if fill:
        capped = ", stopped at the deadline" if fill.get("capped") else ""
        lines.append(f"| fill: messages queued for the dead MX (of {num(fill.get('requested'))} asked; "
                     f"{num(fill.get('seconds'))} s, {num(fill.get('rate'))} msgs/s accepted{capped}) | "
                     f"{num(queued)} | 1,000,000 |")
        if fill.get("accepted", 0) < fill.get("requested", 0) and smoke:
            failures.append(f"W7 fill: {fill.get('accepted')} of {fill.get('requested')} accepted")
        if (fill.get("pending_after_settle") or 0) > 0:
            lines.append(f"| still pending (never attempted) {num(fill.get('settle_seconds'))} s after the fill | "
                         f"{num(fill.get('pending_after_settle'))} | |")
    fe, fb = w7.get("fresh-empty") or {}, w7.get("fresh-backlog") or {}
    for step, what in (("fresh-empty", "empty queue"), ("fresh-backlog", f"{num(queued)} queued")):
        d = w7.get(step) or {}
        if d:
            to = " (timed out)" if d.get("timed_out") else ""
            lines.append(f"| fresh mail to a working MX, {what} ({num(d.get('messages'))} msgs, W1 shape): "
                         f"msgs/s end to end (accepted){to} | {num(d.get('e2e_rate'))} ({num(d.get('accepted_rate'))}) | |")
            if d.get("timed_out") or d.get("delivered") != d.get("messages"):
                failures.append(f"W7 {step}: {d.get('delivered')} of {d.get('messages')} at the sink")
    if fe and fb:
        r = fb["e2e_rate"] / max(fe["e2e_rate"], 1)
        ra = fb["accepted_rate"] / max(fe["accepted_rate"], 1)
        w7["fresh_ratio"] = {"e2e": r, "accepted": ra}
        lines.append(f"| fresh mail with the backlog / empty, same process: end to end (accepted) | {r:.2f} ({ra:.2f}) | ≥ 0.90 |")
    m = w7.get("memory") or {}
    if m:
        lines.append(f"| resident bytes per queued message (RSS {num(m.get('rss_empty_kib', 0) / 1024, '{:,.1f}')} → "
                     f"{num(m.get('rss_backlog_kib', 0) / 1024, '{:,.1f}')} MiB) | {num(m.get('bytes_per_message'))} | ≤ 200 |")
    if fill:
        lines.append(f"| connections to the dead MX during the fill (default settings) | "
                     f"{num(fill.get('dead_mx_connections'))} | ≤ 100 |")
    r = w7.get("restart") or {}
    if r:
        if r.get("ready_s") is None:
            failures.append("W7 restart: not ready")
        lines.append(f"| restart to ready with {num(queued)} queued (SIGKILL; /readyz 200 and SMTP 220), s | "
                     f"{num(r.get('ready_s'), '{:.2f}')} (readyz {num(r.get('readyz_s'), '{:.2f}')}, "
                     f"220 {num(r.get('greeting_s'), '{:.2f}')}) | ≤ 5 (at 1,000,000) |")
    s = w7.get("spool-mix") or {}
    if s:
        if s.get("delivered", 0) < s.get("messages", 0) - s.get("to_dead", 0):
            failures.append(f"W7 spool-mix: {s.get('delivered')} of {s.get('messages', 0) - s.get('to_dead', 0)} delivered")
        lines.append(f"| spool bytes / live bytes, {num(s.get('messages'))} msgs with 1 % deferred "
                     f"({num(s.get('disk_bytes', 0) / 2**20, '{:,.1f}')} MiB in {num(s.get('segments'))} segment(s) for "
                     f"{num(s.get('live_bytes', 0) / 2**20, '{:,.2f}')} MiB live) | {num(s.get('ratio'), '{:,.1f}')} "
                     f"({num(s.get('ratio_without_active'), '{:,.1f}')} without the active segment) | ≤ 2 + active segments |")
    h = w7.get("handoff") or {}
    if h:
        got, left, q = h.get("received_by_b") or 0, h.get("left_on_a"), h.get("queued") or 0
        if left is None or got + left < q:
            failures.append(f"W7 handoff: {q} queued on A, {got} on B, {left} left on A")
        lines.append(f"| hand-off of {num(q)} queued messages (A's --drain-deadline {num(h.get('deadline'))} s): "
                     f"taken by B in s (msgs/s); left on A | {num(got)} in {num(h.get('seconds_handing'), '{:.1f}')} s "
                     f"({num(h.get('rate'))}); {num(left)} left | all, ≥ 5,000 msgs/s |")
    return "\n".join(lines)


def cpu_per_message(path, ticks):
    """Median CPU microseconds per message, by (workload, target): of the
    relay, and of the webhook's receiver."""
    if not path or not os.path.exists(path):
        return {}
    runs = {}
    for line in open(path):
        name, target, msgs, relay, receiver = line.split()
        us = lambda t: int(t) * 1e6 / ticks / int(msgs)
        runs.setdefault((name, target), []).append((us(relay), us(receiver)))
    return {k: (statistics.median(r for r, _ in v), statistics.median(e for _, e in v)) for k, v in runs.items()}


def webhook_cost(order, data, events, failures, cpu):
    """mailrelay with one event webhook against mailrelay without (run
    --webhook-cost): the change of the medians, and of each run's pair
    (the two ran back to back, so the pairs see the same machine)."""
    names = [n for n in order if data[n]["runs"].get("mailrelay-webhook")]
    if not names:
        return None
    lines = ["| workload | mailrelay | mailrelay + one event webhook | change of the medians | change per run (pairs) | median of the pairs | relay CPU µs/msg: without / with (+ receiver) |",
             "|---|---|---|---|---|---|---|"]
    result, messages = {}, 0
    for name in names:
        runs = data[name]["runs"]
        plain, hooked = runs.get("mailrelay", []), runs["mailrelay-webhook"]
        messages += data[name]["messages"] * len(hooked)
        m, w = med(plain), med(hooked)
        change = (w / m - 1) if (m and w) else None
        pairs = [b / a - 1 for a, b in zip(plain, hooked) if a and b]
        pm = statistics.median(pairs) if pairs else None
        pct = lambda x: "n/a" if x is None else f"{x * 100:+.1f} %"
        c0, c1 = cpu.get((name, "mailrelay")), cpu.get((name, "mailrelay-webhook"))
        cpu_text = f"{c0[0]:.0f} / {c1[0]:.0f} (+ {c1[1]:.0f})" if c0 and c1 else "n/a"
        lines.append(f"| {name} msgs/s | {f0(m)} | {f0(w)} | {pct(change)} | "
                     f"{', '.join(pct(x) for x in pairs)} | {pct(pm)} | {cpu_text} |")
        result[name] = {"mailrelay": m, "mailrelay_webhook": w, "change": change,
                        "pair_changes": pairs, "median_pair_change": pm,
                        "cpu_us_per_message": {"mailrelay": c0[0] if c0 else None,
                                               "mailrelay_webhook": c1[0] if c1 else None,
                                               "receiver": c1[1] if c1 else None}}
    # Reception and Delivery at least: two events per message relayed.
    if events is None or events < 2 * messages:
        failures.append(f"webhook cost: the receiver got {events} events for {messages} messages (want at least 2 each)")
    result["events_received"] = events
    note = f"\nevents received by the webhook: {events if events is not None else 'unknown'} for {messages:,} messages"
    return {"markdown": "\n".join(lines) + note, "result": result}


def main():
    ap = argparse.ArgumentParser()
    for a in ("results", "w4", "w5", "w6", "strace", "out"):
        ap.add_argument("--" + a, required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--w7", default="")
    ap.add_argument("--smoke", type=int, default=0)
    ap.add_argument("--webhook-events", type=int, default=None)
    ap.add_argument("--webhook-cpu", default="")
    ap.add_argument("--clock-ticks", type=int, default=100)
    a = ap.parse_args()
    failures = []

    order, data = [], {}
    for line in open(a.results):
        if not line.strip():
            continue
        name, shape, msgs, size, target, v = line.rstrip("\n").split("\t")
        if name not in data:
            order.append(name)
            data[name] = {"messages": int(msgs), "size": int(size), "shape": shape, "runs": {}}
        if v == "fail":
            failures.append(f"{name} {target}: the sink did not get every message")
        data[name]["runs"].setdefault(target, []).append(None if v == "fail" else float(v))

    result = {"runs_per_target": a.runs, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
              "strace": a.strace, "workloads": {}}
    lines = ["| workload | Postfix | mailrelay | mailrelay/Postfix | loopback ceiling |",
             "|---|---|---|---|---|"]
    for name in order:
        d = data[name]
        p, m, l = (med(d["runs"].get(t, [])) for t in ("postfix", "mailrelay", "loopback"))
        ratio = (m / p) if (p and m) else None
        lines.append(f"| {name} ({DESC.get(name, '')}; {d['messages']:,} msgs), msgs/s | {f0(p)} | {f0(m)} | "
                     f"{'n/a' if ratio is None else f'{ratio:.2f}'} | {f0(l)} |")
        result["workloads"][name] = dict(d, description=DESC.get(name, ""), median={
            "postfix": p, "mailrelay": m, "loopback": l, "ratio_mailrelay_postfix": ratio})

    # W4
    w4 = {}
    for path in sorted(glob.glob(os.path.join(a.w4, "*-*.json"))):
        target = os.path.basename(path).split("-")[0]
        try:
            r = json.load(open(path))
        except ValueError:
            failures.append(f"W4 {target}: no result")
            continue
        if r.get("delivered") != r.get("messages") or r.get("errors"):
            failures.append(f"W4 {target}: {r.get('delivered')} of {r.get('messages')} delivered, errors {r.get('errors')}")
        w4.setdefault(target, []).append(r)
    if w4:
        rate = next(iter(w4.values()))[0]["offered_rate"]
        summary = {}
        for target, runs in w4.items():
            summary[target] = {kind: {p: med([r[kind][p] for r in runs]) for p in ("p50", "p99", "p99.9")}
                               for kind in ("accept_ms", "delivery_ms")}
            summary[target]["achieved_rate"] = med([r["achieved_rate"] for r in runs])
        result["workloads"]["W4"] = {"offered_rate": rate, "runs": w4, "median": summary}
        for kind, label in (("accept_ms", "end of DATA → 250"), ("delivery_ms", "250 → at the sink")):
            for p in ("p50", "p99", "p99.9"):
                pv = summary.get("postfix", {}).get(kind, {}).get(p)
                mv = summary.get("mailrelay", {}).get(kind, {}).get(p)
                ratio = f"{mv / pv:.2f}" if pv and mv is not None else "n/a"
                fmt = lambda x: "n/a" if x is None else f"{x:.2f}"
                lines.append(f"| W4 ({rate} msgs/s offered) {label} {p}, ms | {fmt(pv)} | {fmt(mv)} | {ratio} | |")

    # W5
    w5 = [l.rstrip("\n").split("\t") for l in open(a.w5) if l.strip()]
    if w5:
        rows = {}
        for target, n, held, mem in w5:
            rss, pss, procs = (int(x) for x in mem.split())
            rows[(target, int(n))] = {"held": int(held), "rss_kib": rss, "pss_kib": pss, "processes": procs}
            if int(held) != int(n):
                failures.append(f"W5 {target}: {held} of {n} sessions held")
        result["workloads"]["W5"] = {f"{t}/{n}": v for (t, n), v in rows.items()}
        def mib(t, n, k="rss_kib"):
            v = rows.get((t, n))
            return None if v is None else v[k] / 1024
        big = max((n for (t, n) in rows if t == "mailrelay"), default=0)
        fm = lambda x: "n/a" if x is None else f"{x:,.1f}"
        for n in sorted({n for (_, n) in rows}):
            pr, mr = mib("postfix", n), mib("mailrelay", n)
            pp, mp = mib("postfix", n, "pss_kib"), mib("mailrelay", n, "pss_kib")
            procs = rows.get(("postfix", n), {}).get("processes")
            what = "no sessions" if n == 0 else f"{n:,} idle sessions"
            lines.append(f"| W5 {what}: RSS (PSS) MiB | {fm(pr)} ({fm(pp)}){f', {procs} processes' if procs else ''} | "
                         f"{fm(mr)} ({fm(mp)}) | {'n/a' if not (pr and mr) else f'{mr / pr:.2f}'} | |")
        if big and ("postfix", 100) in rows:
            lines.append(f"| W5 mailrelay {big:,} sessions vs Postfix 100 sessions, RSS (PSS) | "
                         f"{fm(mib('postfix', 100))} ({fm(mib('postfix', 100, 'pss_kib'))}) | "
                         f"{fm(mib('mailrelay', big))} ({fm(mib('mailrelay', big, 'pss_kib'))}) | "
                         f"{mib('mailrelay', big) / mib('postfix', 100):.2f} | |")

    # W6
    w6 = json.load(open(a.w6))
    if w6:
        result["workloads"]["W6"] = w6
        lines.append(f"| W6 {w6['cidrs']:,} CIDRs + {w6['domains']:,} domains: compile + build, s | | "
                     f"{w6['total_secs']:.2f} (compile {w6['compile_secs']:.2f}, build {w6['policy_build_secs']:.2f}) | | |")
        lines.append(f"| W6 memory held (peak), MiB | | {w6['rss_mib']:,.0f} ({w6['peak_rss_mib']:,.0f}) | | |")
        lines.append(f"| W6 lookup, ns (per second): IP / name | | {w6['ip_lookup_ns']:.0f} ({w6['ip_lookups_per_s']:,.0f}) / "
                     f"{w6['name_lookup_ns']:.0f} ({w6['name_lookups_per_s']:,.0f}) | | |")

    hook = webhook_cost(order, data, a.webhook_events, failures, cpu_per_message(a.webhook_cpu, a.clock_ticks))
    if hook:
        result["webhook_cost"] = hook["result"]
    table = "\n".join(lines) if len(lines) > 2 else ""
    w7 = w7_steps(a.w7)
    w7_table = ""
    if w7:
        result["workloads"]["W7"] = w7
        w7_table = w7_markdown(w7, failures, a.smoke)
        result["w7_table_markdown"] = w7_table
    result["table_markdown"] = table
    result["failures"] = failures
    json.dump(result, open(a.out, "w"), indent=2)
    if table:
        print(table)
        print(f"\nmedian of {a.runs} run(s) each; load average at the end {os.getloadavg()[0]:.1f}; fsync: {a.strace}")
    if hook:
        print("\n" + hook["markdown"])
    if w7_table:
        print(("\n" if table else "") + w7_table)
        print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    print(f"results written to {a.out}", file=sys.stderr)
    if failures:
        print("FAILURES:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
