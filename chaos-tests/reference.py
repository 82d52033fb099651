#!/usr/bin/env python3
"""The chaos harness's independent checker.

Reads what the harness recorded (history.jsonl: every acknowledged ingest
with its events, every features?ingest=true answer), computes the view with
DuckDB over the acknowledged events (each event id once), and compares it
with the rows the cluster committed: the view's training segments as the
object store holds them (Parquet, read by DuckDB), and, with --export, the
rows `lockstepctl export` wrote from them:

  lost        reference rows the cluster did not commit
  duplicated  event ids the cluster committed more than once
  wrong_rows  committed rows that differ from the reference in any column
              (doubles bit for bit)
  unexpected  committed rows the reference does not have
  wrong_served  features?ingest=true answers that differ from the
              committed training row of their event (label columns are
              null when served; every other column must be equal, null
              for null), or whose training_row verdict is wrong (an
              event with a row must be told will_exist: true, one
              without must not)
  export_mismatches  rows of the export that differ from the segments

Shares no code with lockstep: the view's SELECT is run by DuckDB as
written (the dialect equals standard SQL when each key's events arrive in
event-time order with distinct times, which the harness's generator
guarantees; see docs/semantics.md). Prints the counts as JSON; exit status
0 when all of them are zero.
"""
import argparse
import datetime
import decimal
import glob
import json
import os
import math
import re
import struct
import sys

import duckdb
import pyarrow as pa


def strip_comments(sql):
    return re.sub(r"--[^\n]*", "", sql)


def balanced(text, start):
    """The text inside the parentheses that open at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    raise SystemExit("unbalanced parentheses in the pipeline")


def table_of(sql):
    """(name, [(column, type)]) of the pipeline's CREATE TABLE."""
    m = re.search(r"CREATE\s+TABLE\s+(\w+)\s*\(", sql, re.I)
    if not m:
        raise SystemExit("no CREATE TABLE in the pipeline")
    body, _ = balanced(sql, m.end() - 1)
    cols = []
    depth, part = 0, ""
    for ch in body + ",":
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            words = part.split()
            if words:
                cols.append((words[0], " ".join(words[1:]).upper()))
            part = ""
        else:
            part += ch
    return m.group(1), cols


def view_select(sql, view):
    m = re.search(r"CREATE\s+VIEW\s+" + re.escape(view) + r"\s+AS\s+(SELECT.*?);", sql, re.S | re.I)
    if not m:
        raise SystemExit(f"no CREATE VIEW {view} in the pipeline")
    return m.group(1)


def epoch_ms(v):
    """A timestamp from either side as epoch milliseconds (UTC)."""
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=datetime.timezone.utc)
        return round(v.timestamp() * 1000)
    if isinstance(v, str):
        s = v.rstrip("Z").replace("T", " ")
        d = datetime.datetime.fromisoformat(s).replace(tzinfo=datetime.timezone.utc)
        return round(d.timestamp() * 1000)
    return v


def norm(v):
    """A value comparable across DuckDB, Parquet and JSON: floats by bits."""
    if isinstance(v, decimal.Decimal):
        v = float(v)
    if isinstance(v, float):
        if math.isnan(v):
            return ("nan",)
        return ("f", struct.unpack("<Q", struct.pack("<d", v))[0])
    if isinstance(v, (datetime.datetime, datetime.date)):
        return ("t", epoch_ms(v))
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, int):
        return ("i", v)
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--view", required=True)
    ap.add_argument("--history", required=True)
    ap.add_argument("--segments", required=True, help="a directory of the view's committed training segments (Parquet)")
    ap.add_argument("--export", help="the rows lockstep's export wrote (Parquet): must equal the segments")
    ap.add_argument("--labels", default="", help="the view's label columns (served as null), comma-separated")
    ap.add_argument("--exclude-column", default="user_id")
    ap.add_argument("--exclude-prefix", default="zz-close-",
                    help="rows of these keys are left out on both sides (the events that close the label windows)")
    ap.add_argument("--id-column", default="event_id")
    ap.add_argument("--only-prefix", default="",
                    help="only rows of keys that start with this are compared (a run against a cluster that holds other data)")
    a = ap.parse_args()

    sql = strip_comments(open(a.pipeline).read())
    table, cols = table_of(sql)
    select = view_select(sql, a.view)

    # the acknowledged events, each id once
    acked, conflicts, served = {}, 0, []
    idc = a.id_column

    def add(e):
        nonlocal conflicts
        i = e[idc]
        if i in acked and acked[i] != e:
            conflicts += 1
        acked.setdefault(i, e)

    for line in open(a.history):
        h = json.loads(line)
        kind, status = h.get("kind"), h.get("status", 0)
        if kind == "ingest" and 200 <= status < 300:
            for e in h["events"]:
                add(e)
        elif kind == "features_ingest" and status in (200, 202, 409):
            add(h["event"])
            if status == 200 and h.get("view") == a.view:
                served.append((h["event"][idc], h.get("features"), h.get("training_row")))

    con = duckdb.connect()
    con.execute(f"SET TimeZone = 'UTC'")
    con.execute(f"CREATE TABLE {table} (" + ", ".join(f"{c} {t}" for c, t in cols) + ")")
    events = list(acked.values())
    arrays = {}
    for c, t in cols:
        vals = [e.get(c) for e in events]
        if t.startswith("TIMESTAMP"):
            vals = [None if v is None else v.rstrip("Z").replace("T", " ") for v in vals]
        arrays[c] = pa.array(vals)
    staged = pa.table(arrays)
    con.register("staged", staged)
    casts = ", ".join(f"CAST({c} AS {t})" for c, t in cols)
    con.execute(f"INSERT INTO {table} SELECT {casts} FROM staged")
    ref_cur = con.execute(select)
    ref_names = [d[0] for d in ref_cur.description]
    ref = ref_cur.fetchall()
    files = sorted(glob.glob(os.path.join(a.segments, "*.parquet")))
    if files:
        got_cur = con.execute("SELECT * FROM read_parquet(?)", [files])
        got_names = [d[0] for d in got_cur.description]
        got = got_cur.fetchall()
    else:
        got_names, got = list(ref_names), []
    export_mismatches = 0
    if a.export:
        ex = con.execute("SELECT * FROM read_parquet(?)", [a.export]).fetchall()
        from collections import Counter
        want_ms = Counter(tuple(norm(v) for v in r) for r in got)
        have_ms = Counter(tuple(norm(v) for v in r) for r in ex)
        export_mismatches = sum(((want_ms - have_ms) + (have_ms - want_ms)).values())
    if ref_names != got_names:
        print(json.dumps({"error": f"columns differ: reference {ref_names}, committed {got_names}"}))
        return 1
    ki, ii = ref_names.index(a.exclude_column), ref_names.index(idc)

    def keep(r):
        k = r[ki]
        if a.only_prefix and not (isinstance(k, str) and k.startswith(a.only_prefix)):
            return False
        return not (isinstance(k, str) and k.startswith(a.exclude_prefix))

    want = {r[ii]: r for r in ref if keep(r)}
    have, duplicated = {}, 0
    for r in got:
        if not keep(r):
            continue
        if r[ii] in have:
            duplicated += 1
        else:
            have[r[ii]] = r
    lost = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    wrong = []
    for i in sorted(set(want) & set(have)):
        w, g = want[i], have[i]
        diff = [n for n, x, y in zip(ref_names, w, g) if norm(x) != norm(y)]
        if diff:
            wrong.append({"id": i, "columns": diff,
                          "reference": [str(x) for x in w], "committed": [str(y) for y in g]})

    # a served answer equals its training row: every column but the labels
    # (null when served), null for null; and it says rightly whether the
    # event has a row
    labels = {l for l in a.labels.split(",") if l}
    wrong_served, checked = [], 0
    for i, feats, fate in served:
        row = have.get(i)
        will = (fate or {}).get("will_exist")
        if (i in want) != (will is True):
            checked += 1
            wrong_served.append({"id": i, "training_row": fate, "reference_has_row": i in want})
            continue
        if row is None:
            continue  # no training row (filtered; a lost one is counted above)
        checked += 1
        feats = feats or {}
        diff = sorted(set(got_names) ^ set(feats))
        for n in got_names:
            if n not in feats:
                continue
            v, x = feats[n], row[got_names.index(n)]
            if n in labels:
                same = v is None
            elif v is None or x is None:
                same = v is None and x is None
            elif isinstance(x, datetime.datetime):
                same = epoch_ms(x) == epoch_ms(v)
            elif isinstance(x, (float, decimal.Decimal)):
                same = isinstance(v, (int, float)) and norm(float(v)) == norm(x)
            else:
                same = x == v
            if not same:
                diff.append(n)
        if diff:
            wrong_served.append({"id": i, "columns": diff, "served": feats,
                                 "committed": [str(y) for y in row]})

    out = {
        "acknowledged_events": len(acked),
        "id_conflicts": conflicts,
        "reference_rows": len(want),
        "committed_rows": len(have) + duplicated,
        "lost": len(lost),
        "duplicated": duplicated,
        "wrong_rows": len(wrong),
        "unexpected": len(unexpected),
        "served_checked": checked,
        "wrong_served": len(wrong_served),
        "export_mismatches": export_mismatches,
        "examples": {
            "lost": lost[:10],
            "unexpected": unexpected[:10],
            "wrong_rows": wrong[:5],
            "wrong_served": wrong_served[:5],
        },
    }
    print(json.dumps(out, default=str))
    bad = (out["lost"] + out["duplicated"] + out["wrong_rows"] + out["unexpected"]
           + out["wrong_served"] + export_mismatches)
    return 1 if bad or conflicts else 0


if __name__ == "__main__":
    sys.exit(main())
