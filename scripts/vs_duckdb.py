#!/usr/bin/env python3
"""`lockstep run` against DuckDB (and optionally PyFlink) on two data shapes.

One run of this script generates two in-order event files of the canonical
`ad_events` table and, on each, times

- `lockstep run --threads T` of the canonical view,
- DuckDB with `SET threads TO T`, the view's SELECT copied to Parquet,
- optionally PyFlink (`--pyflink PYTHON`: an interpreter with
  `apache-flink` installed), the same features in Flink SQL,

checks that lockstep's rows equal DuckDB's (every row by event_id, doubles
bit for bit; rows of events that tie on (user_id, event_time) are counted
apart, see docs/semantics.md) and prints one table, side by side. A PyFlink
run that takes longer than --pyflink-timeout is killed and shown as `dnf`.

The shapes:
- `zipf`: `lockstep gen` (Zipf 1.1 users, 20k of them, ~5% clicks);
- `bursty`: scripts/other_shape.py, a generator written apart from ours
  (flat users with a mild head, ~18% clicks, sessions of bursts).

Exit status 1 if any rows differ.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import time

import duckdb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from duckdb_parity import compare, view_select  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def generate(a, shape, path):
    if a.reuse and os.path.exists(path):
        return
    if shape == "zipf":
        subprocess.run([a.lockstep, "gen", "--events", str(a.events), "--users", "20000", "--seed", "11",
                        "--out-of-order", "0", "--late", "0", "--out", path], check=True,
                       stdout=subprocess.DEVNULL)
    else:
        subprocess.run([sys.executable, os.path.join(HERE, "other_shape.py"), "--events", str(a.events),
                        "--out", path], check=True, stdout=subprocess.DEVNULL)


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def run_pyflink(a, events, out):
    """PyFlink's time on `events` as pyflink_peer.py measures it (the job,
    from the start of its mini-cluster; not the conversion of the input to
    CSV), or None when it did not finish within --pyflink-timeout seconds
    (its mini-cluster is killed)."""
    p = subprocess.Popen([a.pyflink, os.path.join(HERE, "pyflink_peer.py"), "--input", events, "--output", out,
                          "--parallelism", str(a.threads)], start_new_session=True, stdout=subprocess.PIPE,
                         text=True)
    try:
        stdout, _ = p.communicate(timeout=a.pyflink_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return None
    m = re.search(r"^pyflink: \d+ events in ([0-9.]+)s", stdout, re.M)
    if p.returncode != 0 or not m:
        sys.exit(f"pyflink_peer.py failed on {events}:\n{stdout}")
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lockstep", required=True, help="path to the lockstep binary (release)")
    ap.add_argument("--sql", default=os.path.join(HERE, "..", "config", "ad_features.sql"))
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--threads", type=int, default=2, help="threads for every engine")
    ap.add_argument("--dir", default="vs-duckdb")
    ap.add_argument("--shapes", default="zipf,bursty")
    ap.add_argument("--reuse", action="store_true", help="reuse generated event files")
    ap.add_argument("--check-threads", type=int,
                    help="also run lockstep with this many threads and require byte-identical output")
    ap.add_argument("--pyflink", help="a Python interpreter with apache-flink: also time PyFlink")
    ap.add_argument("--pyflink-timeout", type=float, default=900,
                    help="seconds before a PyFlink run is given up (reported as not finished)")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    select = view_select(open(a.sql).read())
    results, failed = [], False
    for shape in a.shapes.split(","):
        events = os.path.join(a.dir, f"{shape}-{a.events}.parquet")
        generate(a, shape, events)
        ours = os.path.join(a.dir, f"{shape}-lockstep.parquet")
        theirs = os.path.join(a.dir, f"{shape}-duckdb.parquet")
        t_ours = timed(lambda: subprocess.run(
            [a.lockstep, "run", "--sql", a.sql, "--view", "user_ad_features", "--input", events,
             "--output", ours, "--threads", str(a.threads)], check=True, stdout=subprocess.DEVNULL))
        if a.check_threads is not None:
            other = os.path.join(a.dir, f"{shape}-lockstep-{a.check_threads}.parquet")
            subprocess.run([a.lockstep, "run", "--sql", a.sql, "--view", "user_ad_features", "--input", events,
                            "--output", other, "--threads", str(a.check_threads)], check=True,
                           stdout=subprocess.DEVNULL)
            if open(ours, "rb").read() != open(other, "rb").read():
                print(f"{shape}: --threads {a.threads} and --threads {a.check_threads} wrote different files")
                failed = True
        con = duckdb.connect()
        con.execute(f"SET threads TO {a.threads}")
        con.execute(f"CREATE VIEW ad_events AS SELECT * FROM read_parquet('{events}')")
        t_duck = timed(lambda: con.execute(f"COPY ({select}) TO '{theirs}' (FORMAT PARQUET)"))
        n_ours, n_duck, differ, ties, _ = compare(con, ours, theirs, events)
        t_flink = None
        if a.pyflink:
            t_flink = run_pyflink(a, events, os.path.join(a.dir, f"{shape}-pyflink"))
        failed = failed or bool(differ)
        results.append((shape, t_ours, t_duck, t_flink, n_ours, n_duck, differ, ties))
        for eid, m, d in differ[:5]:
            print(f"  {shape} event {eid}:\n    lockstep {m}\n    duckdb   {d}")
    print(f"\n{a.events:,} events per shape, {a.threads} threads each, lockstep's time includes "
          f"process start; PyFlink's its mini-cluster's start\n")
    head = f"{'shape':8} {'lockstep ev/s':>14} {'duckdb ev/s':>12} {'lockstep/duckdb':>16}"
    if a.pyflink:
        head += f" {'pyflink ev/s':>13} {'lockstep/pyflink':>17}"
    print(head + "  rows (lockstep, duckdb), differing, tie-only differences")
    for shape, t_ours, t_duck, t_flink, n_ours, n_duck, differ, ties in results:
        line = f"{shape:8} {a.events / t_ours:>14,.0f} {a.events / t_duck:>12,.0f} {t_duck / t_ours:>15.2f}x"
        if a.pyflink and t_flink is None:
            line += f" {'dnf in ' + str(int(a.pyflink_timeout)) + ' s':>13} {'>' + format(a.pyflink_timeout / t_ours, '.0f') + 'x':>17}"
        elif a.pyflink:
            line += f" {a.events / t_flink:>13,.0f} {t_flink / t_ours:>16.1f}x"
        print(line + f"  {n_ours:,}, {n_duck:,}, {len(differ)}, {ties}")
    print("PARITY OK" if not failed else "PARITY FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
