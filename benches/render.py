#!/usr/bin/env python3
"""Turns stompline-loadgen JSON lines (one report per run) into Markdown
tables, pairing each stompline run with the RabbitMQ run of the same
scenario and transport and giving the ratio ours/theirs. Chat runs
(stompline only) get one table of their own."""

import json
import sys


def fmt(v, digits=2):
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def ratio(a, b):
    if a is None or b in (None, 0):
        return "–"
    return f"{a / b:.2f}x"


def cpu(r, key="cpu"):
    """Client, server and other processes' CPU (% of one core; 2 cores = 200 %)."""
    c = r[key] if key == "cpu" else r["extra"][key]
    client, server, machine = c["client_pct"], c.get("server_pct"), c.get("machine_pct")
    other = None
    if machine is not None:
        other = max(0.0, machine - client - (server or 0.0))
    pct = lambda v: fmt(v, 0) + " %" if v is not None else "–"
    return pct(client), pct(server), pct(other)


def split(label):
    server, _, transport = label.partition("/")
    return server, transport


def main(path):
    runs = [json.loads(line) for line in open(path) if line.strip()]
    chat = [r for r in runs if r["scenario"] == "chat"]
    runs = [r for r in runs if r["scenario"] != "chat"]
    by = {}
    for r in runs:
        server, transport = split(r["label"])
        key = (r["scenario"], transport)
        if r["scenario"] == "idle":
            key += (r["params"]["sessions"],)
        by.setdefault(key, {}).setdefault(server, []).append(r)

    out = []
    for (scenario, transport, *rest), servers in sorted(by.items(), key=lambda kv: str(kv[0])):
        ours = (servers.get("stompline") or [None])[-1]
        theirs = (servers.get("rabbitmq") or [None])[-1]
        pair = [("stompline", ours), ("rabbitmq", theirs)]
        if scenario in ("fanout", "pairs"):
            p = (ours or theirs)["params"]
            if scenario == "fanout":
                title = (f"fanout over {transport}: 1 publisher → {p['subscribers']} subscribers, "
                         f"{p['size']}-byte bodies, window {p['window']} (credit: {p['credit']}), "
                         f"{p['duration_s']:.0f} s measured")
            else:
                title = (f"pairs over {transport}: {p['pairs']} pairs × {p['rate_per_pair']:.0f} msg/s, "
                         f"{p['size']}-byte bodies, {p['duration_s']:.0f} s measured")
            out += [f"### {title}", "",
                    "| server | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms | undelivered / dup / reordered | max send lag ms | client CPU | server CPU | other CPU |",
                    "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
            for name, r in pair:
                if r is None:
                    continue
                l = r.get("latency_ms") or {}
                d = r.get("deliveries") or {}
                c, s, o = cpu(r)
                out.append(
                    f"| {name} | {fmt(r.get('deliveries_per_s'))} | {fmt(l.get('p50'), 3)} | "
                    f"{fmt(l.get('p99'), 3)} | {fmt(l.get('p999'), 3)} | {fmt(l.get('max'), 1)} | "
                    f"{d.get('lost')} / {d.get('duplicates')} / {d.get('reordered')}"
                    f"{' (' + '; '.join(d['errors']) + ')' if d.get('errors') else ''}"
                    f"{' STALLED' if r.get('stalled') else ''} | "
                    f"{fmt(r.get('max_send_lag_ms'), 1)} | {c} | {s} | {o} |")
            if ours and theirs:
                lo, lt = ours.get("latency_ms") or {}, theirs.get("latency_ms") or {}
                out.append(
                    f"| **ours/theirs** | **{ratio(ours.get('deliveries_per_s'), theirs.get('deliveries_per_s'))}** | "
                    f"{ratio(lo.get('p50'), lt.get('p50'))} | **{ratio(lo.get('p99'), lt.get('p99'))}** | "
                    f"{ratio(lo.get('p999'), lt.get('p999'))} | | | | | | |")
            out.append("")
        elif scenario == "pairs-search":
            p = (ours or theirs)["params"]
            out += [f"### highest per-pair rate with p99 < {p['p99_bound_ms']:.0f} ms over {transport}: "
                    f"{p['pairs']} pairs, {p['size']}-byte bodies, {p['step_s']:.0f} s per step", "",
                    "| server | max msg/s per pair | total msg/s | p50 ms | p99 ms at that rate | client CPU | server CPU | other CPU | steps (rate: p99 ms; ✗ = failed) |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
            for name, r in pair:
                if r is None:
                    continue
                e = r["extra"]
                l = r.get("latency_ms") or {}
                c, s, o = cpu(r)
                steps = ", ".join(
                    f"{st['rate_per_pair']:g}: {fmt(st['p99_ms'], 2)}{'' if st['pass'] else ' ✗'}"
                    for st in e["steps"])
                top = e.get("max_rate_per_pair")
                total = top * p["pairs"] if top else None
                out.append(f"| {name} | {fmt(top, 1)} | {fmt(total, 0)} | {fmt(l.get('p50'), 3)} | "
                           f"{fmt(l.get('p99'), 3)} | {c} | {s} | {o} | {steps} |")
            if ours and theirs:
                out.append(f"| **ours/theirs** | **{ratio(ours['extra'].get('max_rate_per_pair'), theirs['extra'].get('max_rate_per_pair'))}** | | | | | | | |")
            out.append("")
        elif scenario == "idle":
            n = rest[0]
            hb = (ours or theirs)["params"].get("heartbeat_ms", 0)
            out += [f"### idle over {transport}: {n:,} sessions requested, each subscribed to its own destination"
                    f"{f', heart-beats every {hb / 1000:g} s both ways' if hb else ''}", "",
                    "| server | connected | live at reading | failed | RSS before MiB | RSS after MiB | **KiB per session** | connect s | sessions/s | client CPU (connect) | server CPU (connect) | other CPU (connect) | server CPU (idle) |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for name, r in pair:
                if r is None:
                    continue
                e = r["extra"]
                c, s, o = cpu(r)
                mib = lambda k: fmt(e[k] / 1024, 1) if e.get(k) is not None else "–"
                idle_s = e["idle_cpu"].get("server_pct")
                errs = f" ({'; '.join(e['errors'])})" if e.get("errors") else ""
                out.append(f"| {name} | {fmt(e['connected'])} | {fmt(e.get('live_at_reading'))} | {fmt(e['failed'])}{errs} | {mib('rss_before_kib')} | "
                           f"{mib('rss_after_kib')} | **{fmt(e.get('rss_per_session_kib'), 1)}** | "
                           f"{fmt(e['connect_s'], 1)} | {fmt(e['sessions_per_s'], 0)} | {c} | {s} | {o} | {fmt(idle_s, 1)} % |")
            if ours and theirs:
                out.append(f"| **ours/theirs** | | | | | | **{ratio(ours['extra'].get('rss_per_session_kib'), theirs['extra'].get('rss_per_session_kib'))}** | | | | | | | |")
            out.append("")
    if chat:
        out += chat_table(chat)
    print("\n".join(out))


def chat_table(runs):
    """One row per chat run: label `stompline-BACKEND/TRANSPORT/SHAPE`."""
    out = ["### chat pipeline: durable sends with RECEIPTs (SEND /app/chat.send)", "",
           "| backend | conversations | senders | mode | durable msg/s | RECEIPT p50 ms | RECEIPT p99 ms | "
           "delivery p50 ms | delivery p99 ms | delivery p99.9 ms | delivery max ms | deliveries/s | "
           "lost / dup / reordered | max send lag ms | client CPU | server CPU | other CPU |",
           "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in runs:
        p, e = r["params"], r["extra"]
        backend = r["label"].split("/")[0].removeprefix("stompline-")
        shape = (f"{p['conversations']:,} {p['kind']}" + (f" of {p['group_size']}" if p["kind"] == "group" and p["conversations"] > 1 else "")
                 + f" → {p['deliver']}")
        if p["conversations"] == 1:
            shape = f"1 group of {p['users']} → {p['deliver']}"
        mode = f"max, window {p['window']}" if p["mode"] == "max" else f"{fmt(float(p['rate']), 0)} msg/s"
        rl = e.get("receipt_latency_ms") or {}
        l = r.get("latency_ms") or {}
        d = r.get("deliveries") or {}
        c, s, o = cpu(r)
        errs = "; ".join(d.get("errors") or [])
        flags = (f" ({errs})" if errs else "") + (" STALLED" if r.get("stalled") else "")
        unanswered = e.get("unanswered")
        if unanswered:
            flags += f", {unanswered:,} unanswered"
        out.append(
            f"| {backend} | {shape} | {p['senders']} | {mode} | **{fmt(e.get('durable_per_s'))}** | "
            f"{fmt(rl.get('p50'), 2)} | {fmt(rl.get('p99'), 2)} | {fmt(l.get('p50'), 2)} | "
            f"**{fmt(l.get('p99'), 2)}** | {fmt(l.get('p999'), 2)} | {fmt(l.get('max'), 1)} | "
            f"{fmt(r.get('deliveries_per_s'))} | {d.get('lost')} / {d.get('duplicates')} / {d.get('reordered')}{flags} | "
            f"{fmt(r.get('max_send_lag_ms'), 1)} | {c} | {s} | {o} |")
    out.append("")
    return out


if __name__ == "__main__":
    main(sys.argv[1])
