#!/usr/bin/env python3
"""Hostile inputs against a real lockstepd (issue 11): for each, the status
code, the time to answer and the node's peak memory growth (VmHWM).

    cargo build --release -p lockstep-daemon
    python3 scripts/hostile.py target/release/lockstepd

Starts the node on 127.0.0.1:39911 with config/single-node.toml and a
temporary data directory; needs only the Python standard library.
"""
import json, subprocess, sys, time, urllib.request, os, shutil, tempfile
BIN = os.path.abspath(sys.argv[1])
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP = tempfile.mkdtemp(prefix="lockstep-hostile-")
D = os.path.join(TMP, "data")
ADDR = "127.0.0.1:39911"
TOKEN = "hostile-" + os.urandom(8).hex()
p = subprocess.Popen([BIN, "--config", os.path.join(ROOT, "config/single-node.toml"), "--data-dir", D, "--listen", ADDR, "--token", TOKEN],
                     stdout=open(os.path.join(TMP, "node.log"), "w"), stderr=subprocess.STDOUT, cwd=ROOT)
def hwm():
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmHWM:"): return int(l.split()[1]) // 1024
def req(method, path, body=None, headers={}):
    h = {"Authorization": f"Bearer {TOKEN}", **headers}
    r = urllib.request.Request(f"http://{ADDR}{path}", data=body, headers=h, method=method)
    t = time.time()
    try:
        resp = urllib.request.urlopen(r, timeout=120); code = resp.status; out = resp.read()
    except urllib.error.HTTPError as e:
        code = e.code; out = e.read()
    return code, (time.time() - t) * 1000, out
for _ in range(100):
    try:
        if req("GET", "/readyz")[0] == 200: break
    except Exception: pass
    time.sleep(0.2)
base = hwm()
E = "/v1/tables/ad_events/events"
def show(name, r):
    print(f"{name}: HTTP {r[0]} in {r[1]:.0f} ms; peak +{hwm() - base} MiB; {r[2][:160]!r}")
show("30 MiB of `{}` lines", req("POST", E, b"{}\n" * (10 << 20)))
show("24 MiB JSON array of `{}`", req("POST", E, b"[" + b",".join([b"{}"] * (8 << 20)) + b"]"))
bad = "\n".join(json.dumps({"event_id": i, "user_id": "u", "campaign_id": "not a number", "kind": "impression", "ip": "1", "user_agent": "x", "event_time": 1700000000000}) for i in range(100000)).encode()
show("100000 bad events with a key", req("POST", E, bad, {"Idempotency-Key": "bad-1"}))
ok = lambda t, i: json.dumps({"event_id": i, "user_id": "u1", "campaign_id": 1, "kind": "impression", "ip": "1", "user_agent": "x", "event_time": t})
now = int(time.time() * 1000)
show("an event stamped 2126", req("POST", E, ok(now + 100 * 365 * 86400000, 1).encode()))
show("the next event, now", req("POST", E, ok(now, 2).encode()))
a = ok(now + 1000, 3).encode(); b = ok(now + 2000, 4).encode()
show("key k with body A", req("POST", E, a, {"Idempotency-Key": "k"}))
show("key k with body B", req("POST", E, b, {"Idempotency-Key": "k"}))
show("key k with body A again", req("POST", E, a, {"Idempotency-Key": "k"}))
p.terminate(); p.wait()
sql = open(os.path.join(ROOT, "config/ad_features.sql")).read().replace("ad_events", "seitenaufrufe_ä")
open(os.path.join(TMP, "bad.sql"), "w").write(sql)
t = time.time()
r = subprocess.run([BIN, "--config", os.path.join(ROOT, "config/single-node.toml"), "--data-dir", os.path.join(TMP, "d2"), "--listen", "127.0.0.1:39912", "--token", TOKEN, "--pipeline", os.path.join(TMP, "bad.sql")], capture_output=True, text=True, timeout=60)
print(f"a table named seitenaufrufe_ä: exit {r.returncode} in {(time.time()-t)*1000:.0f} ms: {r.stderr.strip()[-200:]}")
shutil.rmtree(TMP, ignore_errors=True)
