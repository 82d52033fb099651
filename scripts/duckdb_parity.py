#!/usr/bin/env python3
"""Cross-check `lockstep run` against DuckDB on the canonical view.

Generates in-order ad events (no out-of-order or late deliveries, where the
dialect's semantics equal standard SQL), runs the canonical pipeline with
`lockstep run` and the same SELECT with DuckDB, and compares every row by
event_id, doubles bit for bit. Rows of events that share (user_id, event_time)
with another event are reported apart: lockstep orders ties by log position,
standard SQL treats them as peers (docs/semantics.md).

Also times both on the same file (`--events 10000000` for the benchmark).
Exit status 1 on any mismatch.
"""
import argparse
import os
import re
import struct
import subprocess
import sys
import time

import duckdb


def view_select(sql_text: str) -> str:
    """The SELECT of the canonical view: lockstep's dialect is DuckDB's here."""
    body = re.sub(r"--[^\n]*", "", sql_text)
    m = re.search(r"CREATE\s+VIEW\s+\w+\s+AS\s+(SELECT.*?);", body, re.S | re.I)
    if not m:
        sys.exit("no CREATE VIEW in the pipeline")
    return m.group(1)


def bits(x):
    return struct.unpack("<Q", struct.pack("<d", x))[0]


COLS = ["event_id", "user_id", "campaign_id", "event_time", "impressions_1h", "impressions_24h",
        "clicks_24h", "ctr_24h", "label_click_15m"]


def compare(con, ours, theirs, events):
    """Row counts (of the files, not of distinct ids) and the rows that differ.

    Returns (lockstep rows, DuckDB rows, differing (id, ours, theirs),
    tie-only differences, events in ties). Every event_id must appear once
    in each output (else exit 1); a row of an event that
    ties with another on (user_id, event_time) is excused only when both
    engines have it (its values may differ by design, not its presence)."""
    q = ", ".join(COLS)
    counts = []
    for path in (ours, theirs):
        n, ids = con.execute(f"SELECT count(*), count(DISTINCT event_id) FROM read_parquet('{path}')").fetchone()
        if n != ids:
            sys.exit(f"{path}: {n} rows but {ids} distinct event ids (a row is repeated)")
        counts.append(n)
    if counts[0] == 0:
        sys.exit(f"{ours} is empty")
    mine = {r[0]: r for r in con.execute(f"SELECT {q} FROM read_parquet('{ours}')").fetchall()}
    duck = {r[0]: r for r in con.execute(f"SELECT {q} FROM read_parquet('{theirs}')").fetchall()}
    tied = {r[0] for r in con.execute(
        f"SELECT event_id FROM read_parquet('{events}') WHERE (user_id, event_time) IN "
        f"(SELECT user_id, event_time FROM read_parquet('{events}') GROUP BY ALL HAVING count(*) > 1)"
    ).fetchall()}
    differ, tie_diffs = [], 0
    for eid in sorted(set(mine) | set(duck)):
        m, d = mine.get(eid), duck.get(eid)
        same = m is not None and d is not None and all(
            (bits(float(x)) == bits(float(y))) if isinstance(x, float) or isinstance(y, float) else x == y
            for x, y in zip(m, d))
        if not same:
            if eid in tied and m is not None and d is not None:
                tie_diffs += 1
            else:
                differ.append((eid, m, d))
    return counts[0], counts[1], differ, tie_diffs, len(tied)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lockstep", required=True, help="path to the lockstep binary")
    ap.add_argument("--sql", default=os.path.join(os.path.dirname(__file__), "..", "config", "ad_features.sql"))
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--dir", default="duckdb-parity")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse", action="store_true", help="reuse the generated events file")
    ap.add_argument("--input", help="time both engines on this events file instead of generating "
                                    "one; no row comparison (it may hold out-of-order data)")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    if a.input:
        return time_only(a)
    events = os.path.join(a.dir, f"events-inorder-{a.events}.parquet")
    if not (a.reuse and os.path.exists(events)):
        subprocess.run([a.lockstep, "gen", "--events", str(a.events), "--users", str(a.users),
                        "--seed", "11", "--out-of-order", "0", "--late", "0", "--out", events], check=True)
    ours = os.path.join(a.dir, "lockstep-rows.parquet")
    t0 = time.perf_counter()
    subprocess.run([a.lockstep, "run", "--sql", a.sql, "--view", "user_ad_features",
                    "--input", events, "--output", ours], check=True)
    t_ours = time.perf_counter() - t0

    con = duckdb.connect()
    con.execute(f"SET threads TO {a.threads}")
    con.execute(f"CREATE VIEW ad_events AS SELECT * FROM read_parquet('{events}')")
    select = view_select(open(a.sql).read())
    theirs = os.path.join(a.dir, "duckdb-rows.parquet")
    t0 = time.perf_counter()
    con.execute(f"COPY ({select}) TO '{theirs}' (FORMAT PARQUET)")
    t_duck = time.perf_counter() - t0

    n_ours, n_duck, mismatches, tie_diffs, n_tied = compare(con, ours, theirs, events)
    print(f"events: {a.events}; rows: lockstep {n_ours}, duckdb {n_duck}")
    print(f"lockstep run: {t_ours:.2f}s ({a.events / t_ours:,.0f} events/s, including process start)")
    print(f"duckdb ({a.threads} threads): {t_duck:.2f}s ({a.events / t_duck:,.0f} events/s)")
    print(f"rows differing: {len(mismatches)}; differing only through event_time ties: {tie_diffs} "
          f"(events in ties: {n_tied})")
    for eid, m, d in mismatches[:10]:
        print(f"  event {eid}:\n    lockstep {m}\n    duckdb   {d}")
    print("PARITY OK" if not mismatches else "PARITY FAILED")
    return 1 if mismatches else 0


def time_only(a):
    """Side-by-side timing on an existing file (e.g. `lockstep bench batch`'s)."""
    ours = os.path.join(a.dir, "lockstep-rows.parquet")
    t0 = time.perf_counter()
    subprocess.run([a.lockstep, "run", "--sql", a.sql, "--view", "user_ad_features",
                    "--input", a.input, "--output", ours], check=True)
    t_ours = time.perf_counter() - t0
    con = duckdb.connect()
    con.execute(f"SET threads TO {a.threads}")
    con.execute(f"CREATE VIEW ad_events AS SELECT * FROM read_parquet('{a.input}')")
    n = con.execute("SELECT count(*) FROM ad_events").fetchone()[0]
    t0 = time.perf_counter()
    con.execute(f"COPY ({view_select(open(a.sql).read())}) TO '{os.path.join(a.dir, 'duckdb-rows.parquet')}' (FORMAT PARQUET)")
    t_duck = time.perf_counter() - t0
    print(f"events: {n}")
    print(f"lockstep run: {t_ours:.2f}s ({n / t_ours:,.0f} events/s, including process start)")
    print(f"duckdb ({a.threads} threads): {t_duck:.2f}s ({n / t_duck:,.0f} events/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
