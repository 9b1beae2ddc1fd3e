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


def main():
    ap = argparse.ArgumentParser()
    for a in ("results", "w4", "w5", "w6", "strace", "out"):
        ap.add_argument("--" + a, required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--smoke", type=int, default=0)
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

    table = "\n".join(lines)
    result["table_markdown"] = table
    result["failures"] = failures
    json.dump(result, open(a.out, "w"), indent=2)
    print(table)
    print(f"\nmedian of {a.runs} run(s) each; load average at the end {os.getloadavg()[0]:.1f}; fsync: {a.strace}")
    print(f"results written to {a.out}", file=sys.stderr)
    if failures:
        print("FAILURES:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
