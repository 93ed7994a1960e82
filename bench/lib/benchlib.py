#!/usr/bin/env python3
"""Helpers of bench/run (python3 standard library only).

  benchlib.py ports N                      N free loopback TCP ports, one per line
  benchlib.py provision ...                tenants + API keys through parley's admin API
                                           (--keys-out FILE, --ids-out FILE: one a line)
  benchlib.py add FILE k=v... < JSON       append one result record (JSON from stdin + k=v)
  benchlib.py report --in FILE --out DIR   results.json, results.md, chart.png (gnuplot); the
                                           profile section links profile.svg (lib/flamegraph.py)
  benchlib.py cost PID... [--db PID...] [--by-thread]
                                           CPU seconds and context switches of the processes
                                           and all their descendants and threads (JSON); those
                                           of --db apart (db_cpu_s, db_cs); per thread name
  benchlib.py cost-delta WRK BEFORE AFTER  the wrk JSON line with the costs between two `cost`
                                           answers merged in
"""
import argparse
import concurrent.futures
import datetime
import http.client
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time


def cmd_ports(a):
    socks = []
    for _ in range(a.n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    for s in socks:
        print(s.getsockname()[1])
    for s in socks:
        s.close()


def _tree(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cost(pids):
    """CPU seconds (user + system, of live and exited threads) and context switches (voluntary
    + involuntary, of the live threads) of the processes and all their descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu, cs = 0.0, 0
    for root in pids:
        for p in _tree(int(root)):
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                cpu += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
                for t in os.listdir(f"/proc/{p}/task"):
                    with open(f"/proc/{p}/task/{t}/status") as f:
                        for line in f:
                            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                                cs += int(line.split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return {"cpu_s": cpu, "cs": cs}


def by_thread(pids):
    """CPU seconds and context switches of the live threads of the processes and their
    descendants, summed per thread name (comm: CAF names its threads caf.multiplexer,
    caf.clock, ...; parley's own threads keep the process's name)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for root in pids:
        for p in _tree(int(root)):
            try:
                tasks = os.listdir(f"/proc/{p}/task")
            except OSError:
                continue
            for t in tasks:
                try:
                    with open(f"/proc/{p}/task/{t}/stat") as f:
                        head, _, rest = f.read().rpartition(")")
                    fields = rest.split()
                    name = head.split("(", 1)[1]
                    cs = 0
                    with open(f"/proc/{p}/task/{t}/status") as f:
                        for line in f:
                            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                                cs += int(line.split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                e = out.setdefault(name, {"threads": 0, "cpu_s": 0.0, "cs": 0})
                e["threads"] += 1
                e["cpu_s"] += (int(fields[11]) + int(fields[12])) / tick
                e["cs"] += cs
    return out


def cmd_cost(a):
    out = cost(a.pids)
    if a.db:
        d = cost(a.db)
        out.update(db_cpu_s=d["cpu_s"], db_cs=d["cs"])
    if a.by_thread:
        out["by_thread"] = by_thread(a.pids)
    print(json.dumps(out))


def cmd_cost_delta(a):
    """The wrk line (JSON) with the difference of two `cost` answers merged in: cpu_s, cs, the
    db_ pair, and by_thread per thread name."""
    try:
        rec = json.loads(a.wrk)
    except json.JSONDecodeError:
        rec = {"requests": 0, "raw_output": a.wrk[-2000:]}
    x, y = json.loads(a.before), json.loads(a.after)
    for k, v in y.items():
        if isinstance(v, (int, float)) and k in x:
            rec[k] = round(v - x[k], 3) if isinstance(v, float) else v - x[k]
    if "by_thread" in y:
        bx = x.get("by_thread") or {}
        rec["by_thread"] = {n: {"threads": e["threads"],
                                "cpu_s": round(e["cpu_s"] - (bx.get(n) or {}).get("cpu_s", 0), 3),
                                "cs": e["cs"] - (bx.get(n) or {}).get("cs", 0)}
                            for n, e in y["by_thread"].items()}
    print(json.dumps(rec))


# ---- provisioning ------------------------------------------------------------------------------

_local = threading.local()


def _conn(port):
    c = getattr(_local, "conn", None)
    if c is None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        _local.conn = c
    return c


def _post(port, admin_key, path, body):
    for attempt in range(3):
        c = _conn(port)
        try:
            c.request("POST", path, body=json.dumps(body),
                      headers={"Authorization": "Bearer " + admin_key, "Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
            if r.status >= 300:
                raise RuntimeError(f"POST {path}: {r.status} {data[:300]!r}")
            return json.loads(data)
        except (ConnectionError, http.client.HTTPException, OSError):
            c.close()
            _local.conn = None
            if attempt == 2:
                raise
            time.sleep(0.1)


def cmd_provision(a):
    cfg = json.loads(a.config)
    t0 = time.monotonic()

    def one(i):
        t = _post(a.port, a.admin_key, "/admin/v1/tenants",
                  {"slug": f"{a.prefix}-{i}", "name": f"Bench {a.prefix} {i}", "config": cfg})
        k = _post(a.port, a.admin_key, f"/admin/v1/tenants/{t['id']}/keys", {"name": "bench"})
        return t["id"], k["key"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=a.threads) as ex:
        made = list(ex.map(one, range(a.tenants)))
    with open(a.keys_out, "w") as f:
        f.write("\n".join(k for _, k in made) + "\n")
    if a.ids_out:
        with open(a.ids_out, "w") as f:
            f.write("\n".join(i for i, _ in made) + "\n")
    print(json.dumps({"tenants": a.tenants, "seconds": round(time.monotonic() - t0, 3)}))


# ---- records -----------------------------------------------------------------------------------

def _value(v):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    if v in ("true", "false"):
        return v == "true"
    return v


def cmd_add(a):
    raw = sys.stdin.read().strip()
    rec = {}
    if raw:
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            rec = {"raw_output": raw[-2000:], "parse_error": True}
    for kv in a.kv:
        k, _, v = kv.partition("=")
        rec[k] = _value(v)
    with open(a.file, "a") as f:
        f.write(json.dumps(rec) + "\n")


# ---- report ------------------------------------------------------------------------------------

def _machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kib / 1048576, 1),
            "kernel": platform.release(), "os": _os_name()}


def _os_name():
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _f(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _ms(us):
    return None if us is None else us / 1000.0


TARGET_ORDER = ["direct", "nginx", "portkey", "parley"]
TARGET_NAMES = {"direct": "upstream direct (nginx)", "nginx": "nginx reverse proxy",
                "portkey": "Portkey OSS 1.15.2", "parley": "parley"}


def _table(L, title, header, align, rows):
    """Appends a markdown section: its title, the header and alignment rows, then the rows."""
    L.append(title)
    L.append("")
    L.append("| " + " | ".join(header) + " |")
    L.append("|" + "|".join(align) + "|")
    for r in rows:
        L.append("| " + " | ".join(r) + " |")
    L.append("")


def _copy_fields(dst, src, **names):
    """dst[new] = src[old] for every new=old pair."""
    for new, old in names.items():
        dst[new] = src.get(old)


def _actors_measured(rec):
    """The actors a footprint step really left alive (parley_actors before/after), else its
    successful requests."""
    n = rec.get("ok") or 0
    before, after = rec.get("live_before"), rec.get("live_after")
    if isinstance(after, int) and isinstance(before, int) and after > before:
        n = after - before
    return n


def build(records, meta_extra):
    meta = next((r for r in records if r.get("phase") == "meta"), {})
    meta = {**meta, **meta_extra}
    meta.pop("phase", None)
    meta["notes"] = [r.get("text", "") for r in records if r.get("phase") == "note"]
    meta["machine"] = _machine()
    out = {"meta": meta, "throughput": [], "rate": [], "streams": [], "footprint": {}, "problems": []}
    # (the cluster phase adds out["cluster"]: setup, rows, hop, rate)

    # throughput (wrk)
    tp = [r for r in records if r.get("phase") == "throughput"]
    direct = {r["conc"]: r for r in tp if r.get("target") == "direct"}
    for r in tp:
        row = {"target": r["target"], "conc": r["conc"], "requests": r.get("requests", 0),
               "rps": r.get("rps"), "p50_ms": _ms(r.get("p50_us")), "p90_ms": _ms(r.get("p90_us")),
               "p99_ms": _ms(r.get("p99_us")), "max_ms": _ms(r.get("max_us")),
               "errors": sum((r.get("errors") or {}).values()) if isinstance(r.get("errors"), dict) else None,
               "non2xx": (r.get("errors") or {}).get("status") if isinstance(r.get("errors"), dict) else None}
        if r.get("requests") and r.get("cpu_s") is not None:
            row["cpu_us_per_req"] = r["cpu_s"] * 1e6 / r["requests"]
            row["cs_per_req"] = r["cs"] / r["requests"]
        d = direct.get(r["conc"])
        if d and r["target"] != "direct" and row["p50_ms"] is not None:
            row["added_p50_ms"] = row["p50_ms"] - _ms(d["p50_us"])
            row["added_p99_ms"] = row["p99_ms"] - _ms(d["p99_us"])
        out["throughput"].append(row)
        if not r.get("requests"):
            out["problems"].append(f"throughput: {r['target']} at concurrency {r['conc']} served 0 requests")
        elif row["errors"]:
            out["problems"].append(f"throughput: {r['target']} at concurrency {r['conc']}: {row['errors']} errors ({r.get('errors')})")
    out["throughput"].sort(key=lambda x: (x["conc"], TARGET_ORDER.index(x["target"]) if x["target"] in TARGET_ORDER else 9))
    ratios = []
    for conc in sorted({r["conc"] for r in out["throughput"]}):
        by = {r["target"]: r for r in out["throughput"] if r["conc"] == conc}
        p = by.get("parley")
        if not p or not p["rps"]:
            continue
        ratio = {"conc": conc}
        for other in ("nginx", "portkey", "direct"):
            o = by.get(other)
            ratio[f"parley_over_{other}"] = (p["rps"] / o["rps"]) if o and o["rps"] else None
        n = by.get("nginx")
        ratio["cpu_parley_over_nginx"] = (p["cpu_us_per_req"] / n["cpu_us_per_req"]) \
            if n and p.get("cpu_us_per_req") and n.get("cpu_us_per_req") else None
        ratios.append(ratio)
    out["ratios"] = ratios

    # open-loop constant rate
    rate = [r for r in records if r.get("phase") == "rate"]
    rdirect = next((r for r in rate if r.get("target") == "direct"), None)
    for r in rate:
        lat = r.get("latency_ms") or {}
        row = {"target": r["target"], "target_rps": r.get("target_rps"), "achieved_rps": r.get("achieved_rps"),
               "planned": r.get("planned"), "ok": r.get("ok"), "errors": r.get("errors"),
               "error_kinds": r.get("error_kinds"), "connections": r.get("connections"),
               "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"), "p99_ms": lat.get("p99"), "max_ms": lat.get("max")}
        if rdirect and r is not rdirect and lat.get("p99") is not None and (rdirect.get("latency_ms") or {}).get("p99") is not None:
            row["added_p50_ms"] = lat["p50"] - rdirect["latency_ms"]["p50"]
            row["added_p99_ms"] = lat["p99"] - rdirect["latency_ms"]["p99"]
        out["rate"].append(row)
        if not r.get("ok"):
            out["problems"].append(f"rate: {r['target']} answered no request ({r.get('error_kinds')}, {r.get('last_error', '')})")
        elif r.get("errors"):
            out["problems"].append(f"rate: {r['target']}: {r['errors']} of {r.get('planned')} failed ({r.get('error_kinds')})")
    out["rate"].sort(key=lambda x: TARGET_ORDER.index(x["target"]) if x["target"] in TARGET_ORDER else 9)

    # streams
    st = [r for r in records if r.get("phase") == "streams"]
    sdirect = {r["requested"]: r for r in st if r.get("target") == "direct"}
    for r in st:
        if r.get("target") != "parley":
            continue
        d = sdirect.get(r["requested"], {})
        t, dt = r.get("ttft_ms") or {}, d.get("ttft_ms") or {}
        rss = r.get("rss_kib") or {}
        row = {"requested": r["requested"], "n": r.get("n"), "ok": r.get("ok"), "errors": r.get("errors"),
               "error_kinds": r.get("error_kinds"), "peak_open": r.get("peak_open"),
               "direct_peak_open": d.get("peak_open"), "direct_errors": d.get("errors"),
               "ttft_p50_ms": t.get("p50"), "ttft_p99_ms": t.get("p99"),
               "direct_ttft_p50_ms": dt.get("p50"), "direct_ttft_p99_ms": dt.get("p99"),
               "rss_before_mib": rss.get("before", 0) / 1024,
               "rss_all_open_mib": (rss.get("most_open") or rss.get("all_open") or 0) / 1024,
               "most_open_sampled": rss.get("most_open_streams"),
               "rss_peak_mib": rss.get("peak_sampled", 0) / 1024, "hwm_mib": rss.get("hwm_after", 0) / 1024,
               "rss_after_mib": (r.get("rss_after_kib") or 0) / 1024, "limited_by": r.get("limited_by")}
        if t.get("p99") is not None and dt.get("p99") is not None:
            row["added_ttft_p50_ms"] = t["p50"] - dt["p50"]
            row["added_ttft_p99_ms"] = t["p99"] - dt["p99"]
        out["streams"].append(row)
        if not r.get("ok"):
            out["problems"].append(f"streams: no stream through parley completed at N={r.get('n')} ({r.get('error_kinds')}, {r.get('last_error', '')})")
        elif r.get("errors"):
            out["problems"].append(f"streams: {r['errors']} of {r.get('n')} streams through parley failed ({r.get('error_kinds')}, last: {r.get('last_error', '')[:200]})")
        if d and d.get("errors"):
            out["problems"].append(f"streams: {d['errors']} of {d.get('n')} direct streams failed ({d.get('error_kinds')})")
    out["streams"].sort(key=lambda x: x["requested"])

    # footprint
    fp = {r.get("step"): r for r in records if r.get("phase") == "footprint"}
    if fp:
        f = {}
        c = fp.get("conversations")
        if c:
            _copy_fields(f, c, conversations="count", conversations_ok="ok", conversation_errors="errors",
                         conversations_per_second="per_second", conversation_seconds="seconds",
                         rss_before_conversations_kib="rss_before_kib",
                         rss_after_conversations_kib="rss_after_kib")
            n = _actors_measured(c)
            f["conversation_actors_measured"] = n
            if n:
                f["kib_per_conversation"] = (c["rss_after_kib"] - c["rss_before_kib"]) / n
            f["idle_seconds"] = c.get("idle_seconds")
            f["live_conversation_actors_before"] = c.get("live_before")
            f["live_conversation_actors_after"] = c.get("live_after")
            if c.get("errors"):
                out["problems"].append(f"footprint: {c['errors']} of {c.get('count')} conversations failed ({c.get('error_kinds')}, {c.get('last_error', '')[:200]})")
        p = fp.get("passivation")
        if p:
            f["rss_after_idle_kib"] = p.get("rss_kib")
            f["passivation_wait_seconds"] = p.get("waited_seconds")
            f["live_conversation_actors_idle"] = p.get("live")
            f["passivations"] = p.get("passivations")
            if c:
                grown = c["rss_after_kib"] - c["rss_before_kib"]
                f["rss_returned_kib"] = c["rss_after_kib"] - p["rss_kib"]
                f["rss_returned_fraction"] = (f["rss_returned_kib"] / grown) if grown > 0 else None
        t = fp.get("tenants")
        if t:
            _copy_fields(f, t, tenants="count", tenants_ok="ok", tenant_requests_per_second="per_second",
                         rss_before_tenants_kib="rss_before_kib", rss_after_tenants_kib="rss_after_kib",
                         provision_seconds="provision_seconds", live_tenant_actors_before="live_before",
                         live_tenant_actors_after="live_after")
            n = _actors_measured(t)
            f["tenant_actors_measured"] = n
            if n:
                f["kib_per_tenant"] = (t["rss_after_kib"] - t["rss_before_kib"]) / n
            if t.get("errors"):
                out["problems"].append(f"footprint: {t['errors']} of {t.get('count')} tenant requests failed ({t.get('error_kinds')}, {t.get('last_error', '')[:200]})")
        out["footprint"] = f

    # CPU profile of parley under load (bench/lib/flamegraph.py's summary)
    prof = next((r for r in records if r.get("phase") == "profile"), None)
    if prof:
        out["profile"] = {k: prof.get(k) for k in ("svg", "seconds", "frequency_hz", "conc", "samples", "kinds",
                                                    "threads", "top_self", "top_inclusive", "wrk")}

    cl = _cluster(records, out["problems"])
    if cl:
        out["cluster"] = cl

    for r in records:
        if r.get("phase") == "problem":
            out["problems"].append(r.get("text", ""))
    out["targets"] = _targets(out)
    return out


CLUSTER_ORDER = ["direct", "owner", "remote", "round_robin"]
CLUSTER_NAMES = {"direct": "upstream direct (nginx)", "owner": "owner node (local admission)",
                 "remote": "non-owner node (remote admission)", "round_robin": "round robin over the 3 nodes"}


def _cluster(records, problems):
    """The cluster phase: wrk rows per target and concurrency (added latency vs the upstream
    direct), the remote hop (non-owner minus owner at the same concurrency), round robin vs the
    owner, and the open-loop rows."""
    wrk = [r for r in records if r.get("phase") == "cluster"]
    rate = [r for r in records if r.get("phase") == "cluster_rate"]
    setup = next((r for r in records if r.get("phase") == "cluster_setup"), None)
    if not wrk and not rate and not setup:
        return None
    rows = []
    direct = {r["conc"]: r for r in wrk if r.get("target") == "direct"}
    for r in wrk:
        n = r.get("requests") or 0
        row = {"target": r["target"], "conc": r["conc"], "threads": r.get("threads"), "requests": n,
               "rps": r.get("rps"), "p50_ms": _ms(r.get("p50_us")), "p90_ms": _ms(r.get("p90_us")),
               "p99_ms": _ms(r.get("p99_us")), "max_ms": _ms(r.get("max_us")),
               "errors": sum((r.get("errors") or {}).values()) if isinstance(r.get("errors"), dict) else None}
        if n and r.get("cpu_s") is not None:
            row["cpu_us_per_req"] = r["cpu_s"] * 1e6 / n
            row["cs_per_req"] = r["cs"] / n
        if n and r.get("db_cpu_s") is not None:
            row["db_cpu_us_per_req"] = r["db_cpu_s"] * 1e6 / n
        if n and isinstance(r.get("by_thread"), dict):
            row["by_thread"] = {name: {"threads": e.get("threads"), "cpu_us_per_req": e["cpu_s"] * 1e6 / n,
                                       "cs_per_req": e["cs"] / n}
                                for name, e in r["by_thread"].items()}
        d = direct.get(r["conc"])
        if d and r["target"] != "direct" and row["p50_ms"] is not None and d.get("p50_us") is not None:
            row["added_p50_ms"] = row["p50_ms"] - _ms(d["p50_us"])
            row["added_p99_ms"] = row["p99_ms"] - _ms(d["p99_us"])
        rows.append(row)
        if not n:
            problems.append(f"cluster: {r['target']} at concurrency {r['conc']} served 0 requests")
        elif row["errors"]:
            problems.append(f"cluster: {r['target']} at concurrency {r['conc']}: {row['errors']} errors ({r.get('errors')})")
    rows.sort(key=lambda x: (x["conc"] if x["target"] != "round_robin" else x["conc"] - 0.5,
                             CLUSTER_ORDER.index(x["target"]) if x["target"] in CLUSTER_ORDER else 9))
    by = {(r["target"], r["conc"]): r for r in rows}
    hop = []
    for conc in sorted({r["conc"] for r in rows if r["target"] == "owner"}):
        o, m = by.get(("owner", conc)), by.get(("remote", conc))
        if not o or not m or not o.get("requests") or not m.get("requests"):
            continue
        h = {"conc": conc, "owner_p50_ms": o["p50_ms"], "remote_p50_ms": m["p50_ms"],
             "owner_p99_ms": o["p99_ms"], "remote_p99_ms": m["p99_ms"],
             "added_p50_ms": m["p50_ms"] - o["p50_ms"], "added_p99_ms": m["p99_ms"] - o["p99_ms"],
             "rps_remote_over_owner": (m["rps"] / o["rps"]) if o.get("rps") else None}
        if o.get("cpu_us_per_req") is not None and m.get("cpu_us_per_req") is not None:
            h["added_cpu_us_per_req"] = m["cpu_us_per_req"] - o["cpu_us_per_req"]
            h["added_cs_per_req"] = m["cs_per_req"] - o["cs_per_req"]
        if o.get("by_thread") and m.get("by_thread"):
            names = sorted(set(o["by_thread"]) | set(m["by_thread"]))
            z = {"threads": None, "cpu_us_per_req": 0.0, "cs_per_req": 0.0}
            h["by_thread"] = [{"name": nm, "threads": (m["by_thread"].get(nm) or o["by_thread"].get(nm))["threads"],
                               "owner_cpu_us": (o["by_thread"].get(nm) or z)["cpu_us_per_req"],
                               "remote_cpu_us": (m["by_thread"].get(nm) or z)["cpu_us_per_req"],
                               "owner_cs": (o["by_thread"].get(nm) or z)["cs_per_req"],
                               "remote_cs": (m["by_thread"].get(nm) or z)["cs_per_req"]} for nm in names]
        # round robin with 3 wrk threads, at the multiple of 3 at or above this concurrency
        # (compared only when that is close to it: not 3 for 1)
        rr = by.get(("round_robin", (conc + 2) // 3 * 3))
        if rr and rr.get("rps") and o.get("rps") and rr["conc"] <= conc * 1.15:
            h["rr_conc"] = rr["conc"]
            h["rps_rr_over_owner"] = rr["rps"] / o["rps"]
        hop.append(h)
    rrows = []
    rdirect = next((r for r in rate if r.get("target") == "direct"), None)
    rowner = next((r for r in rate if r.get("target") == "owner"), None)
    for r in rate:
        lat = r.get("latency_ms") or {}
        row = {"target": r["target"], "target_rps": r.get("target_rps"), "achieved_rps": r.get("achieved_rps"),
               "ok": r.get("ok"), "errors": r.get("errors"), "connections": r.get("connections"),
               "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"), "p99_ms": lat.get("p99"), "max_ms": lat.get("max")}
        for base, name in ((rdirect, "direct"), (rowner, "owner")):
            bl = (base or {}).get("latency_ms") or {}
            if name == "owner" and r["target"] in ("direct", "owner"):
                continue
            if base is not None and r is not base and lat.get("p99") is not None and bl.get("p99") is not None:
                row[f"added_p50_vs_{name}_ms"] = lat["p50"] - bl["p50"]
                row[f"added_p99_vs_{name}_ms"] = lat["p99"] - bl["p99"]
        rrows.append(row)
        if not r.get("ok"):
            problems.append(f"cluster: open loop, {r['target']} answered no request ({r.get('error_kinds')}, {r.get('last_error', '')})")
        elif r.get("errors"):
            problems.append(f"cluster: open loop, {r['target']}: {r['errors']} of {r.get('planned')} failed ({r.get('error_kinds')})")
    rrows.sort(key=lambda x: CLUSTER_ORDER.index(x["target"]) if x["target"] in CLUSTER_ORDER else 9)
    st = {k: v for k, v in (setup or {}).items() if k != "phase"}
    return {"setup": st, "rows": rows, "hop": hop, "rate": rrows}


def _targets(o):
    rows = []
    by = {(r["target"], r["conc"]): r for r in o["throughput"]}
    concs = sorted({r["conc"] for r in o["throughput"]})
    top = concs[-1] if concs else None
    p, n, k = by.get(("parley", top)), by.get(("nginx", top)), by.get(("portkey", top))
    if p and n and n["rps"]:
        v = p["rps"] / n["rps"]
        rows.append({"target": f"throughput vs nginx-as-proxy at concurrency {top}", "goal": ">= 1.0x",
                     "measured": f"{v:.2f}x", "met": v >= 1.0})
    for conc in concs:
        pc, nc = by.get(("parley", conc)), by.get(("nginx", conc))
        if pc and nc and pc.get("cpu_us_per_req") and nc.get("cpu_us_per_req"):
            v = pc["cpu_us_per_req"] / nc["cpu_us_per_req"]
            rows.append({"target": f"CPU per request vs nginx-as-proxy at concurrency {conc}", "goal": "<= 2x",
                         "measured": f"{v:.2f}x ({pc['cpu_us_per_req']:.0f} vs {nc['cpu_us_per_req']:.0f} us)",
                         "met": v <= 2})
        if pc and pc.get("cs_per_req") is not None:
            rows.append({"target": f"parley's context switches per request at concurrency {conc}", "goal": "<= 1.0",
                         "measured": f"{pc['cs_per_req']:.2f}" + (f" (nginx {nc['cs_per_req']:.2f})" if nc and nc.get("cs_per_req") is not None else ""),
                         "met": pc["cs_per_req"] <= 1.0})
    if p and k and k["rps"]:
        v = p["rps"] / k["rps"]
        rows.append({"target": f"throughput vs Portkey at concurrency {top}", "goal": ">= 30x",
                     "measured": f"{v:.1f}x", "met": v >= 30})
    pr = next((r for r in o["rate"] if r["target"] == "parley"), None)
    if pr and pr.get("added_p99_ms") is not None:
        ok = pr["added_p99_ms"] <= 0.5 and not pr.get("errors")
        rows.append({"target": f"added p99 at {pr['target_rps']:.0f} RPS (open loop)", "goal": "<= 0.5 ms",
                     "measured": f"{pr['added_p99_ms']:.2f} ms (p99 {pr['p99_ms']:.2f} vs {pr['p99_ms'] - pr['added_p99_ms']:.2f} direct; {pr.get('errors') or 0} errors)",
                     "met": ok})
    if o["streams"]:
        s = o["streams"][-1]
        rows.append({"target": f"{s['requested']:,} concurrent streams: resident memory", "goal": "<= 1 GiB",
                     "measured": f"{s['hwm_mib']:.0f} MiB peak (VmHWM) at {s['n']:,} streams, {s['errors']} errors"
                                 + (" (descriptor limit, see below)" if s.get("limited_by") else ""),
                     "met": (s["hwm_mib"] <= 1024 and not s["errors"]) and (True if s["n"] >= s["requested"] else f"yes, at {s['n']:,}")})
        if s.get("added_ttft_p99_ms") is not None:
            rows.append({"target": f"{s['requested']:,} concurrent streams: added TTFT p99", "goal": "<= 5 ms",
                         "measured": f"{s['added_ttft_p99_ms']:.2f} ms", "met": s["added_ttft_p99_ms"] <= 5})
    cl = o.get("cluster") or {}
    h1 = next((h for h in cl.get("hop", []) if h["conc"] == 1), None)
    if h1:
        rows.append({"target": "cluster: remote admission hop, added p99 at concurrency 1 (non-owner minus owner node)",
                     "goal": "<= 0.3 ms",
                     "measured": f"{h1['added_p99_ms']:.2f} ms (p99 {h1['remote_p99_ms']:.2f} vs {h1['owner_p99_ms']:.2f}; added p50 {h1['added_p50_ms']:.2f} ms)",
                     "met": h1["added_p99_ms"] <= 0.3})
    rr = next((r for r in cl.get("rate", []) if r["target"] == "remote" and r.get("added_p99_vs_owner_ms") is not None), None)
    if rr:
        rows.append({"target": f"cluster: remote admission hop, added p99 at {rr['target_rps']:.0f} RPS (open loop, non-owner minus owner)",
                     "goal": "<= 0.3 ms",
                     "measured": f"{rr['added_p99_vs_owner_ms']:.2f} ms (p99 {rr['p99_ms']:.2f} vs {rr['p99_ms'] - rr['added_p99_vs_owner_ms']:.2f}; added p50 {rr['added_p50_vs_owner_ms']:.2f} ms; {rr.get('errors') or 0} errors)",
                     "met": rr["added_p99_vs_owner_ms"] <= 0.3 and not rr.get("errors")})
    f = o["footprint"]
    if f.get("kib_per_conversation") is not None:
        v = f["kib_per_conversation"]
        rows.append({"target": "active conversation actor", "goal": "<= 4 KB + its history",
                     "measured": f"{v:.1f} KiB per live conversation (RSS delta / {f['conversation_actors_measured']:,} actors, incl. its 2-message history, store caches, allocator overhead)",
                     "met": v <= 4})
    return rows


def _md(o):
    m = o["meta"]
    mc = m["machine"]
    L = []
    L.append(f"Run **{m.get('date', '?')}**, `{m.get('command', 'bench/run')}`, parley `{m.get('parley_version', '?')}`.")
    L.append("")
    L.append(f"Machine: {mc['nproc']} vCPU {mc['cpu']}, {mc['ram_gib']} GiB RAM, Linux {mc['kernel']}, {mc['os']}; "
             f"{m.get('tools', '')}; load average {m.get('loadavg', '?')}")
    L.append("")
    if m.get("notes"):
        for n in m["notes"]:
            L.append(f"- {n}")
        L.append("")
    if o["targets"]:
        L.append("### Targets vs measured")
        L.append("")
        L.append("| target | goal | measured | met |")
        L.append("|---|---|---|---|")
        for t in o["targets"]:
            met = t["met"] if isinstance(t["met"], str) else ("yes" if t["met"] else "**no**")
            L.append(f"| {t['target']} | {t['goal']} | {t['measured']} | {met} |")
        L.append("")
    if o["throughput"]:
        _table(L, f"### Throughput and latency (wrk, closed loop, {m.get('duration_s', '?')} s per run)",
               ["concurrency", "target", "requests/s", "p50 ms", "p90 ms", "p99 ms", "added p50 ms",
                "added p99 ms", "errors", "CPU us/request", "context switches/request"],
               ["---:", "---"] + ["---:"] * 9,
               [[str(r["conc"]), TARGET_NAMES.get(r["target"], r["target"]), _f(r["rps"], 0),
                 _f(r["p50_ms"], 3), _f(r["p90_ms"], 3), _f(r["p99_ms"], 3),
                 _f(r.get("added_p50_ms"), 3), _f(r.get("added_p99_ms"), 3), _f(r["errors"]),
                 _f(r.get("cpu_us_per_req"), 1), _f(r.get("cs_per_req"), 2)]
                for r in o["throughput"]])
        if o["ratios"]:
            L.append("| concurrency | parley / nginx proxy | parley / Portkey | parley / upstream direct | CPU per request, parley / nginx proxy |")
            L.append("|---:|---:|---:|---:|---:|")
            for r in o["ratios"]:
                def x(v, d=2):
                    return "-" if v is None else f"{v:.{d}f}x"
                L.append(f"| {r['conc']} | {x(r['parley_over_nginx'])} | {x(r['parley_over_portkey'], 1)} | {x(r['parley_over_direct'])} | {x(r.get('cpu_parley_over_nginx'))} |")
            L.append("")
    if o["rate"]:
        r0 = o["rate"][0]
        _table(L, f"### Added latency at a constant {r0['target_rps']:.0f} requests/s (open loop, parley_stream_load rate)",
               ["target", "achieved/s", "ok", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms",
                "added p50 ms", "added p99 ms", "connections"],
               ["---"] + ["---:"] * 10,
               [[TARGET_NAMES.get(r["target"], r["target"]), _f(r["achieved_rps"], 0), _f(r["ok"]),
                 _f(r["errors"]), _f(r["p50_ms"], 3), _f(r["p90_ms"], 3), _f(r["p99_ms"], 3),
                 _f(r["max_ms"], 3), _f(r.get("added_p50_ms"), 3), _f(r.get("added_p99_ms"), 3),
                 _f(r["connections"])]
                for r in o["rate"]])
    pf = o.get("profile")
    if pf:
        L.append(f"### CPU profile of parley under load (perf, wrk c={pf.get('conc', 64)})")
        L.append("")
        w = pf.get("wrk") or {}
        L.append(f"[flame graph]({pf.get('svg') or 'profile.svg'}): {_f(pf.get('samples'))} samples of parley's threads, "
                 f"`perf record -F {pf.get('frequency_hz', '?')} --call-graph dwarf` for {pf.get('seconds', '?')} s "
                 f"while wrk ran at concurrency {pf.get('conc', 64)}"
                 + (f" ({_f(w.get('rps'), 0)} requests/s with perf attached)" if w.get("rps") else "") + ".")
        L.append("")
        kinds = pf.get("kinds") or {}
        names = {"kernel": "kernel", "parley": "parley binary", "libc": "libc, libstdc++, ld.so",
                 "caf": "CAF", "sqlite": "SQLite", "other": "other libraries (jemalloc, OpenSSL, spdlog, fmt, ...)"}
        _table(L, "Where the samples are (self time, by kind of code):", ["code", "samples", "share"],
               ["---", "---:", "---:"],
               [[names.get(k, k), _f(v.get("samples")), f"{v.get('percent', 0):.1f} %"] for k, v in kinds.items()])
        _table(L, "Top functions by self samples:", ["function", "code", "self samples", "share"],
               ["---", "---", "---:", "---:"],
               [[f"`{e['function']}`", e.get("kind", ""), _f(e.get("samples")), f"{e.get('percent', 0):.1f} %"]
                for e in pf.get("top_self") or []])
    if o["streams"]:
        L.append(f"### Concurrent SSE streams through parley ({m.get('stream_desc', '')})")
        L.append("")
        L.append("| streams asked | run | held open at once | errors | TTFT p50 ms | TTFT p99 ms | direct TTFT p99 ms | added TTFT p99 ms | RSS before MiB | RSS, most open MiB | VmHWM MiB | RSS after MiB |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s in o["streams"]:
            L.append(f"| {_f(s['requested'])} | {_f(s['n'])} | {_f(s['peak_open'])} | {_f(s['errors'])} | {_f(s['ttft_p50_ms'], 2)} | "
                     f"{_f(s['ttft_p99_ms'], 2)} | {_f(s['direct_ttft_p99_ms'], 2)} | {_f(s.get('added_ttft_p99_ms'), 2)} | "
                     f"{_f(s['rss_before_mib'], 1)} | {_f(s['rss_all_open_mib'], 1)} | {_f(s['hwm_mib'], 1)} | {_f(s['rss_after_mib'], 1)} |")
        lim = [s for s in o["streams"] if s.get("limited_by")]
        for s in lim:
            L.append("")
            L.append(f"{_f(s['requested'])} streams asked, {_f(s['n'])} run: {s['limited_by']}.")
        L.append("")
    f = o["footprint"]
    if f:
        L.append("### Actor footprint (parley-echo, no upstream)")
        L.append("")
        L.append("| measure | value |")
        L.append("|---|---:|")

        def kib(v):
            return "-" if v is None else f"{v / 1024:,.1f} MiB"
        def live(a, b):
            return "-" if a in (None, "") and b in (None, "") else f"{_f(a)} -> {_f(b)}"
        rows = [
            ("conversations created, one turn each, 16 clients (fresh parley)", _f(f.get("conversations_ok"))),
            ("live conversation actors before -> after (`parley_actors`)", live(f.get("live_conversation_actors_before"), f.get("live_conversation_actors_after"))),
            ("spawn rate: conversations/s (create + first turn)", _f(f.get("conversations_per_second"), 0)),
            ("RSS before / after the conversations", f"{kib(f.get('rss_before_conversations_kib'))} / {kib(f.get('rss_after_conversations_kib'))}"),
            ("**memory per active conversation** (RSS delta / conversations)", f"{_f(f.get('kib_per_conversation'), 2)} KiB"),
            (f"after {f.get('passivation_wait_seconds', '?')} s idle (idle timeout {f.get('idle_seconds', '?')} s): live conversation actors, passivations", f"{_f(f.get('live_conversation_actors_idle'))}, {_f(f.get('passivations'))}"),
            (f"RSS after {f.get('passivation_wait_seconds', '?')} s idle", kib(f.get("rss_after_idle_kib"))),
            ("RSS given back to the OS by passivation", f"{kib(f.get('rss_returned_kib'))} ({_f(100 * f['rss_returned_fraction'], 0) if f.get('rss_returned_fraction') is not None else '-'} % of the growth)"),
            ("tenants, one key and one request each, 16 clients (fresh parley)", _f(f.get("tenants_ok"))),
            ("live tenant actors before -> after (`parley_actors`)", live(f.get("live_tenant_actors_before"), f.get("live_tenant_actors_after"))),
            ("tenant first requests/s (key lookup in the store + tenant actor spawn + turn)", _f(f.get("tenant_requests_per_second"), 0)),
            ("RSS before / after the tenants", f"{kib(f.get('rss_before_tenants_kib'))} / {kib(f.get('rss_after_tenants_kib'))}"),
            ("**memory per tenant** (tenant actor + key cache entry; RSS delta / tenants)", f"{_f(f.get('kib_per_tenant'), 2)} KiB"),
        ]
        for k, v in rows:
            L.append(f"| {k} | {v} |")
        L.append("")
    if o.get("cluster"):
        _md_cluster(L, o["cluster"], m)
    if o["problems"]:
        L.append("### Problems seen in this run")
        L.append("")
        for p in o["problems"]:
            L.append(f"- {p}")
        L.append("")
    if m.get("chart"):
        L.append(f"![requests/s by concurrency]({m['chart']})")
        L.append("")
    return "\n".join(L)


def _md_cluster(L, c, m):
    st = c.get("setup") or {}
    L.append("### Cluster: local vs remote admission (3 nodes, one PostgreSQL)")
    L.append("")
    if st:
        L.append(f"One tenant, owned by **{st.get('owner', '?')}** (epoch {st.get('epoch', '?')}) for the whole phase; "
                 f"the remote hop goes through **{st.get('remote', '?')}**, which authenticates the request, sends the "
                 f"admission to the owner's tenant actor over CAF's middleman and streams the turn's deltas back. "
                 f"Round robin: 3 wrk threads, one per node (a third of the requests local, two thirds remote). "
                 f"Start-up (PostgreSQL, 3 nodes, membership, tenant, first requests): {_f(st['setup_ms'] / 1000, 1) if isinstance(st.get('setup_ms'), int) else '?'} s.")
        L.append("")
    if c.get("rows"):
        _table(L, f"wrk, closed loop, {m.get('duration_s', '?')} s per run (CPU and context switches: the three nodes together; PostgreSQL apart):",
               ["concurrency", "target", "requests/s", "p50 ms", "p90 ms", "p99 ms", "added p50 ms", "added p99 ms",
                "errors", "CPU us/request", "PostgreSQL CPU us/request", "context switches/request"],
               ["---:", "---"] + ["---:"] * 10,
               [[str(r["conc"]), CLUSTER_NAMES.get(r["target"], r["target"]), _f(r["rps"], 0), _f(r["p50_ms"], 3),
                 _f(r["p90_ms"], 3), _f(r["p99_ms"], 3), _f(r.get("added_p50_ms"), 3), _f(r.get("added_p99_ms"), 3),
                 _f(r["errors"]), _f(r.get("cpu_us_per_req"), 1), _f(r.get("db_cpu_us_per_req"), 1),
                 _f(r.get("cs_per_req"), 2)]
                for r in c["rows"]])
    if c.get("hop"):
        def x(v, d=2):
            return "-" if v is None else f"{v:.{d}f}x"
        _table(L, "The remote hop: the non-owner node minus the owner node at the same concurrency (same run):",
               ["concurrency", "p50 owner / non-owner ms", "added p50 ms", "p99 owner / non-owner ms", "added p99 ms",
                "requests/s, non-owner / owner", "added CPU us/request", "added context switches/request",
                "requests/s, round robin / owner"],
               ["---:"] + ["---:"] * 8,
               [[str(h["conc"]), f"{_f(h['owner_p50_ms'], 3)} / {_f(h['remote_p50_ms'], 3)}", _f(h["added_p50_ms"], 3),
                 f"{_f(h['owner_p99_ms'], 3)} / {_f(h['remote_p99_ms'], 3)}", _f(h["added_p99_ms"], 3),
                 x(h.get("rps_remote_over_owner")), _f(h.get("added_cpu_us_per_req"), 1), _f(h.get("added_cs_per_req"), 2),
                 (x(h.get("rps_rr_over_owner")) + f" (c={h['rr_conc']})") if h.get("rps_rr_over_owner") is not None else "-"]
                for h in c["hop"]])
    hops = [h for h in c.get("hop", []) if h.get("by_thread")]
    for h in ([hops[0], hops[-1]] if len(hops) > 1 else hops):
        _table(L, f"Where the hop's work runs at concurrency {h['conc']}: per request, the three nodes' threads summed by "
                  f"thread name (CAF names its own; parley's io threads, persistence workers and main thread are all `parley`):",
               ["thread name (threads)", "CPU us/request, owner / non-owner", "added CPU us/request",
                "context switches/request, owner / non-owner", "added context switches/request"],
               ["---", "---:", "---:", "---:", "---:"],
               [[f"`{t['name']}` ({t['threads']})", f"{_f(t['owner_cpu_us'], 1)} / {_f(t['remote_cpu_us'], 1)}",
                 _f(t["remote_cpu_us"] - t["owner_cpu_us"], 1), f"{_f(t['owner_cs'], 2)} / {_f(t['remote_cs'], 2)}",
                 _f(t["remote_cs"] - t["owner_cs"], 2)]
                for t in sorted(h["by_thread"], key=lambda t: -(t["remote_cs"] + t["owner_cs"]))
                if t["owner_cs"] >= 0.01 or t["remote_cs"] >= 0.01 or t["remote_cpu_us"] >= 1 or t["owner_cpu_us"] >= 1])
    if c.get("rate"):
        r0 = c["rate"][0]
        _table(L, f"Open loop at a constant {r0['target_rps']:.0f} requests/s (parley_stream_load rate):",
               ["target", "achieved/s", "ok", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms",
                "added p50 ms (vs direct)", "added p99 ms (vs direct)", "added p50 ms (vs owner)", "added p99 ms (vs owner)"],
               ["---"] + ["---:"] * 11,
               [[CLUSTER_NAMES.get(r["target"], r["target"]), _f(r["achieved_rps"], 0), _f(r["ok"]), _f(r["errors"]),
                 _f(r["p50_ms"], 3), _f(r["p90_ms"], 3), _f(r["p99_ms"], 3), _f(r["max_ms"], 3),
                 _f(r.get("added_p50_vs_direct_ms"), 3), _f(r.get("added_p99_vs_direct_ms"), 3),
                 _f(r.get("added_p50_vs_owner_ms"), 3), _f(r.get("added_p99_vs_owner_ms"), 3)]
                for r in c["rate"]])


def _chart(o, out_dir):
    if not shutil.which("gnuplot") or not o["throughput"]:
        return None
    concs = sorted({r["conc"] for r in o["throughput"]})
    targets = [t for t in TARGET_ORDER if any(r["target"] == t for r in o["throughput"])]
    by = {(r["target"], r["conc"]): r for r in o["throughput"]}
    dat = os.path.join(out_dir, "chart.dat")
    with open(dat, "w") as f:
        f.write("conc " + " ".join(targets) + "\n")
        for c in concs:
            f.write(f"{c} " + " ".join(str((by.get((t, c)) or {}).get("rps") or 0) for t in targets) + "\n")
    dat99 = os.path.join(out_dir, "chart-p99.dat")
    with open(dat99, "w") as f:
        f.write("conc " + " ".join(targets) + "\n")
        for c in concs:
            f.write(f"{c} " + " ".join(str((by.get((t, c)) or {}).get("p99_ms") or 0) for t in targets) + "\n")
    png = os.path.join(out_dir, "chart.png")
    titles = {"direct": "upstream direct", "nginx": "nginx proxy", "portkey": "Portkey 1.15.2", "parley": "parley"}
    plot = ", ".join(f"'{dat}' using {i + 2}:xtic(1) title '{titles[t]}'" for i, t in enumerate(targets))
    plot99 = ", ".join(f"'{dat99}' using {i + 2}:xtic(1) title '{titles[t]}'" for i, t in enumerate(targets))
    script = f"""set terminal pngcairo size 1000,900 noenhanced font ',10'
set output '{png}'
set multiplot layout 2,1 title 'wrk on loopback, same upstream, one run ({_machine()["nproc"]} vCPU)'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set key top left
set grid ytics
set xlabel 'client concurrency'
set title 'requests per second (higher is better)'
set ylabel 'requests/s'
set yrange [0:*]
plot {plot}
set title 'p99 latency in ms, log scale (lower is better)'
set ylabel 'p99 ms'
set logscale y
set yrange [0.01:*]
plot {plot99}
unset multiplot
"""
    try:
        r = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True, timeout=30)
        if r.returncode != 0:
            script = script.replace("pngcairo", "png")
            r = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True, timeout=30)
        return "chart.png" if r.returncode == 0 and os.path.exists(png) else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def cmd_report(a):
    records = []
    with open(a.infile) as f:
        for line in f:
            line = line.strip()
            if line:
                records.append(json.loads(line))
    os.makedirs(a.out, exist_ok=True)
    o = build(records, {})
    chart = _chart(o, a.out)
    if chart:
        o["meta"]["chart"] = chart
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(o, f, indent=2)
    md = _md(o)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    if a.fail_on_problems and o["problems"]:
        # only rig breakage makes the smoke fail: a target served nothing
        broken = [p for p in o["problems"] if "0 requests" in p or "no request" in p or "no stream" in p]
        if broken:
            print("bench: the rig is broken: " + "; ".join(broken), file=sys.stderr)
            sys.exit(1)


def cmd_publish(a):
    """Copies a run to the committed reference directory and splices its results.md into the
    docs page between the markers, so the published numbers are always a run's own output."""
    ref = a.reference
    if os.path.abspath(a.source) != os.path.abspath(ref):
        if os.path.isdir(ref):
            shutil.rmtree(ref)
        os.makedirs(ref)
        for name in ("results.json", "results.md", "chart.png", "profile.svg", "records.jsonl"):
            src = os.path.join(a.source, name)
            if os.path.exists(src):
                shutil.copy2(src, ref)
        if os.path.isdir(os.path.join(a.source, "logs")):
            shutil.copytree(os.path.join(a.source, "logs"), os.path.join(ref, "logs"))
    md = open(os.path.join(ref, "results.md")).read()
    rel = os.path.relpath(ref, os.path.dirname(os.path.abspath(a.docs)))
    md = md.replace("](chart.png)", f"]({rel}/chart.png)")
    md = md.replace("](profile.svg)", f"]({rel}/profile.svg)")
    md = md.replace("(logs/", f"({rel}/logs/")
    begin, end = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"
    doc = open(a.docs).read()
    if begin not in doc or end not in doc:
        sys.exit(f"{a.docs} has no {begin} ... {end} section")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(a.docs, "w") as f:
        f.write(head + begin + "\n" + md.strip() + "\n" + end + tail)
    print(f"published {a.source} -> {ref} and {a.docs}")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ports")
    s.add_argument("n", type=int)
    s.set_defaults(fn=cmd_ports)
    s = sub.add_parser("provision")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--admin-key", required=True)
    s.add_argument("--tenants", type=int, default=1)
    s.add_argument("--prefix", default="bench")
    s.add_argument("--config", default="{}")
    s.add_argument("--keys-out", required=True)
    s.add_argument("--ids-out", help="the tenant ids, one a line, in the order of the keys")
    s.add_argument("--threads", type=int, default=4)
    s.set_defaults(fn=cmd_provision)
    s = sub.add_parser("add")
    s.add_argument("file")
    s.add_argument("kv", nargs="*")
    s.set_defaults(fn=cmd_add)
    s = sub.add_parser("cost")
    s.add_argument("pids", nargs="+")
    s.add_argument("--db", nargs="+", help="more processes, counted apart as db_cpu_s and db_cs")
    s.add_argument("--by-thread", action="store_true", help="also per thread name (by_thread)")
    s.set_defaults(fn=cmd_cost)
    s = sub.add_parser("cost-delta")
    s.add_argument("wrk")
    s.add_argument("before")
    s.add_argument("after")
    s.set_defaults(fn=cmd_cost_delta)
    s = sub.add_parser("report")
    s.add_argument("--in", dest="infile", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--fail-on-problems", action="store_true")
    s.set_defaults(fn=cmd_report)
    s = sub.add_parser("publish")
    s.add_argument("source")
    s.add_argument("--reference", required=True)
    s.add_argument("--docs", required=True)
    s.set_defaults(fn=cmd_publish)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
