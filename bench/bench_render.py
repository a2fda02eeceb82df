"""Render time for a 10,000-agent, two-site call center: every target, both sites.

Each agent has a phone line at both sites (home line and backup line), so each
site's config holds 10,000 phone endpoints; the policy has 200 DIDs with caller-area
rules, 50 queues and 4 carriers. Measured: policy validation (including the phone
checks) and rendering Asterisk and FreeSWITCH for both sites plus the Kamailio list.
Target: under 2 s in total. Run: python bench/bench_render.py [AGENTS]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dialplans.asterisk import render_asterisk
from dialplans.freeswitch import render_freeswitch
from dialplans.policy import Phone, check_phones, parse_policy
from sip_trunks.kamailio import render_kamailio


def policy_doc(dids: int = 200, queues: int = 50) -> dict[str, Any]:
    trunks = []
    for c in range(4):
        for s in ("a", "b"):
            t: dict[str, Any] = {"name": f"c{c}-{s}", "site": s, "host": f"192.0.2.{10 + c}", "qualify_s": 30}
            if c % 2:
                t["trust"] = [f"192.0.2.{10 + c}"]
            else:
                t["auth"] = {"username": f"acct{c}{s}", "password": {"env": "BENCH_PW"}}
                t["register"] = True
            trunks.append(t)
    return {
        "sites": [{"id": "a", "host": "10.77.0.11"}, {"id": "b", "host": "10.77.0.12"}],
        "carriers": [{"name": f"carrier{c}", "trunks": [t for t in trunks if t["name"].startswith(f"c{c}-")]}
                     for c in range(4)],
        "outbound": {s: [f"c{c}-{s}" for c in range(4)] for s in ("a", "b")},
        "queues": [{"name": f"q{i:03d}"} for i in range(queues)],
        "dids": [{"number": f"49301{i:05d}", "queue": f"q{i % queues:03d}", "split": {"a": 37, "b": 63},
                  "areas": [{"prefix": f"0{30 + j}", "site": "ab"[j % 2]} for j in range(5)]
                  + [{"prefix": "089", "split": {"a": 20, "b": 80}}]} for i in range(dids)],
    }


def main() -> None:
    agents = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    os.environ.setdefault("BENCH_PW", "bench-Secret")
    doc = policy_doc()
    phones = [Phone(s, str(100000 + i), f"u{100000 + i}-{s}", f"pw-{i}") for s in ("a", "b") for i in range(agents)]
    best: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for _ in range(3):  # best of 3: the first run also compiles the templates
        t0 = time.perf_counter()
        p = parse_policy(doc)
        check_phones(phones, ["a", "b"])
        t1 = time.perf_counter()
        out: dict[str, str] = {}
        for s in ("a", "b"):
            out |= {f"asterisk/{s}/{k}": v for k, v in render_asterisk(p, s, phones).items()}
        t2 = time.perf_counter()
        for s in ("a", "b"):
            out |= {f"freeswitch/{s}/{k}": v for k, v in render_freeswitch(p, s, phones).items()}
        t3 = time.perf_counter()
        out |= render_kamailio(p)
        t4 = time.perf_counter()
        for k, v in {"validate": t1 - t0, "asterisk (2 sites)": t2 - t1, "freeswitch (2 sites)": t3 - t2,
                     "kamailio": t4 - t3, "total": t4 - t0}.items():
            best[k] = min(best.get(k, float("inf")), v)
        sizes = {k: len(v) for k, v in out.items()}
    print(f"{agents} agents x 2 sites, {len(doc['dids'])} DIDs, {len(doc['queues'])} queues, 8 trunks; best of 3")
    for k, v in best.items():
        print(f"  {k:<22} {v * 1000:8.1f} ms")
    print(f"  output: {len(sizes)} files, {sum(sizes.values()) / 1e6:.1f} MB")
    print(f"  target: total < 2000 ms -> {'met' if best['total'] < 2.0 else 'MISSED'}")


if __name__ == "__main__":
    main()
