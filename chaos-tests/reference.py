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
import hashlib
import json
import os
import math
import re
import struct
import sys
import tempfile

import duckdb


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


def bare_type(t):
    """A column's type without its constraints (NOT NULL, DEFAULT ...)."""
    return re.split(r"\s+(?:NOT|NULL|PRIMARY|DEFAULT|UNIQUE|CHECK|REFERENCES|COLLATE)\b", t, flags=re.I)[0]


INTEGER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
                 "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT")


def kind_of(duck_type):
    """A column type's class, as norm() classes values: integers, floats
    (and decimals), timestamps (by millisecond), booleans; any other type
    is its own class. Values of different classes are never equal."""
    t = duck_type.upper()
    if t in INTEGER_TYPES:
        return "integer"
    if t.startswith(("DOUBLE", "FLOAT", "REAL", "DECIMAL", "NUMERIC")):
        return "float"
    if t.startswith("TIMESTAMP") or t == "DATE":
        return "time"
    if t == "BOOLEAN":
        return "boolean"
    return t


def kinds(con, rel):
    return {n: kind_of(t) for n, t in con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {rel})").fetchall()}


def q(name):
    return '"' + name.replace('"', '""') + '"'


def normalized(con, rel, names):
    """A SELECT list over `rel` whose values compare as norm() does (within
    a class: compare the classes first)."""
    types = kinds(con, rel)
    out = []
    for n in names:
        k = types[n]
        if k == "float":
            # the value, and its sign (DuckDB's = has 0.0 = -0.0)
            out.append(f"CAST({q(n)} AS DOUBLE) AS {q(n)}")
            out.append(f"signbit(CAST({q(n)} AS DOUBLE)) AS {q(n + ' sign')}")
        elif k == "time":
            out.append(f"epoch_ms(CAST({q(n)} AS TIMESTAMP)) AS {q(n)}")
        else:
            out.append(q(n))
    return ", ".join(out)


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
    ap.add_argument("--memory-limit", default="2GB", help="DuckDB's memory limit (it spills to disk past it)")
    a = ap.parse_args()

    sql = strip_comments(open(a.pipeline).read())
    table, cols = table_of(sql)
    select = view_select(sql, a.view)
    idc = a.id_column

    with tempfile.TemporaryDirectory(prefix="lockstep-reference-") as tmp:
        # the acknowledged events go to disk as they are read, each with its
        # place in the history and a digest (a second event under an id
        # must be the same event): nothing grows with the run in memory but
        # DuckDB, which spills
        staged = os.path.join(tmp, "acked.jsonl")
        served = []
        n = 0
        with open(staged, "w") as out:
            def add(e):
                nonlocal n
                digest = hashlib.blake2b(json.dumps(e, sort_keys=True).encode(), digest_size=8).hexdigest()
                row = {c: e.get(c) for c, _ in cols}
                row["__seq"], row["__digest"] = n, digest
                n += 1
                out.write(json.dumps(row))
                out.write("\n")

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

        con = duckdb.connect(os.path.join(tmp, "reference.duckdb"))
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"SET memory_limit = '{a.memory_limit}'")
        con.execute("SET preserve_insertion_order = false")
        con.execute(f"CREATE TABLE {table} (" + ", ".join(f"{c} {t}" for c, t in cols) + ")")
        json_cols = {c: ("VARCHAR" if bare_type(t).upper().startswith("TIMESTAMP") else bare_type(t))
                     for c, t in cols}
        json_cols["__seq"], json_cols["__digest"] = "BIGINT", "VARCHAR"
        spec = "{" + ", ".join(f"'{c}': '{t}'" for c, t in json_cols.items()) + "}"
        con.execute(f"CREATE TABLE __acked AS SELECT * FROM read_json(?, format = 'newline_delimited', columns = {spec})",
                    [staged])
        os.remove(staged)
        con.execute(f"""CREATE TABLE __ranked AS SELECT *,
            row_number() OVER (PARTITION BY {q(idc)} ORDER BY __seq) AS __rank,
            first(__digest) OVER (PARTITION BY {q(idc)} ORDER BY __seq) AS __first
            FROM __acked""")
        con.execute("DROP TABLE __acked")
        acknowledged, conflicts = con.execute(
            "SELECT count(*) FILTER (WHERE __rank = 1), count(*) FILTER (WHERE __digest <> __first) FROM __ranked"
        ).fetchone()
        casts = ", ".join(
            f"CAST(replace(rtrim({q(c)}, 'Z'), 'T', ' ') AS {t})" if json_cols[c] == "VARCHAR" and bare_type(t).upper().startswith("TIMESTAMP")
            else f"CAST({q(c)} AS {t})"
            for c, t in cols)
        con.execute(f"INSERT INTO {table} SELECT {casts} FROM __ranked WHERE __rank = 1")
        con.execute("DROP TABLE __ranked")

        con.execute(f"CREATE TABLE __ref AS {select}")
        files = sorted(glob.glob(os.path.join(a.segments, "*.parquet")))
        if files:
            con.execute("CREATE TABLE __got AS SELECT * FROM read_parquet(?)", [files])
        else:
            con.execute("CREATE TABLE __got AS SELECT * FROM __ref LIMIT 0")
        ref_names = [r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE __ref)").fetchall()]
        got_names = [r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE __got)").fetchall()]

        export_mismatches = 0
        if a.export:
            con.execute("CREATE TABLE __exported AS SELECT * FROM read_parquet(?)", [a.export])
            ex_names = [r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE __exported)").fetchall()]
            if ex_names != got_names or kinds(con, "__exported") != kinds(con, "__got"):
                # every row differs, as norm() would find
                export_mismatches = con.execute(
                    "SELECT (SELECT count(*) FROM __exported) + (SELECT count(*) FROM __got)").fetchone()[0]
            else:
                g, e = normalized(con, "__got", got_names), normalized(con, "__exported", got_names)
                export_mismatches = con.execute(f"""SELECT count(*) FROM (
                    (SELECT {g} FROM __got EXCEPT ALL SELECT {e} FROM __exported)
                    UNION ALL
                    (SELECT {e} FROM __exported EXCEPT ALL SELECT {g} FROM __got))""").fetchone()[0]
        if ref_names != got_names:
            print(json.dumps({"error": f"columns differ: reference {ref_names}, committed {got_names}"}))
            return 1

        # rows of the excluded keys (and of other runs' keys) on neither side
        key_type = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE __ref)").fetchall())[a.exclude_column]
        keep, params = "TRUE", []
        if key_type.upper().startswith("VARCHAR"):
            keep = f"NOT coalesce(starts_with({q(a.exclude_column)}, ?), false)"
            params = [a.exclude_prefix]
            if a.only_prefix:
                keep += f" AND coalesce(starts_with({q(a.exclude_column)}, ?), false)"
                params.append(a.only_prefix)
        elif a.only_prefix:
            keep = "FALSE"
        ID = q(idc)
        con.execute(f"CREATE TABLE __want AS SELECT * FROM __ref WHERE {keep}", params)
        con.execute(f"CREATE TABLE __have_all AS SELECT * FROM __got WHERE {keep}", params)
        con.execute(f"""CREATE TABLE __have AS SELECT * EXCLUDE (__rank) FROM (
            SELECT *, row_number() OVER (PARTITION BY {ID}) AS __rank FROM __have_all) WHERE __rank = 1""")
        # ids compared NULL-safe throughout (a NULL id is an id like any
        # other: NOT IN would hide every lost row behind it)
        reference_rows = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {ID} FROM __want)").fetchone()[0]
        committed = con.execute("SELECT count(*) FROM __have_all").fetchone()[0]
        duplicated = committed - con.execute("SELECT count(*) FROM __have").fetchone()[0]
        lost_q = f"""SELECT DISTINCT {ID} FROM __want w WHERE NOT EXISTS
            (SELECT 1 FROM __have h WHERE h.{ID} IS NOT DISTINCT FROM w.{ID})"""
        unexpected_q = f"""SELECT {ID} FROM __have h WHERE NOT EXISTS
            (SELECT 1 FROM __want w WHERE w.{ID} IS NOT DISTINCT FROM h.{ID})"""

        def ids(query):
            return [r[0] for r in con.execute(query).fetchall()]

        lost_n = con.execute(f"SELECT count(*) FROM ({lost_q})").fetchone()[0]
        lost = ids(f"SELECT * FROM ({lost_q}) ORDER BY 1 LIMIT 10")
        unexpected_n = con.execute(f"SELECT count(*) FROM ({unexpected_q})").fetchone()[0]
        unexpected = ids(f"SELECT * FROM ({unexpected_q}) ORDER BY 1 LIMIT 10")

        # every column compared as norm() compares it: values of different
        # classes (an integer and a float, a number and a string) never
        # equal, floats bit for bit (the sign of a zero too), timestamps
        # by their millisecond
        wk, hk = kinds(con, "__want"), kinds(con, "__have")
        same = []
        for c in ref_names:
            w, h = f"w.{q(c)}", f"h.{q(c)}"
            if wk[c] != hk[c]:
                same.append(f"({w} IS NULL AND {h} IS NULL)")
            elif wk[c] == "float":
                wd, hd = f"CAST({w} AS DOUBLE)", f"CAST({h} AS DOUBLE)"
                same.append(f"({wd} IS NOT DISTINCT FROM {hd} AND ({wd} IS NULL OR signbit({wd}) = signbit({hd})))")
            elif wk[c] == "time":
                same.append(f"(epoch_ms(CAST({w} AS TIMESTAMP)) IS NOT DISTINCT FROM epoch_ms(CAST({h} AS TIMESTAMP)))")
            else:
                same.append(f"({w} IS NOT DISTINCT FROM {h})")
        flags = ", ".join(f"{x} AS __same_{k}" for k, x in enumerate(same))
        con.execute(f"""CREATE TABLE __compared AS SELECT w.{ID} AS __id, {flags}
            FROM (SELECT DISTINCT ON ({ID}) * FROM __want) w JOIN __have h ON w.{ID} IS NOT DISTINCT FROM h.{ID}""")
        all_same = " AND ".join(f"__same_{k}" for k in range(len(same))) or "TRUE"
        wrong_n = con.execute(f"SELECT count(*) FROM __compared WHERE NOT ({all_same})").fetchone()[0]
        wrong = []
        for r in con.execute(f"SELECT * FROM __compared WHERE NOT ({all_same}) ORDER BY __id LIMIT 5").fetchall():
            i = r[0]
            w = con.execute(f"SELECT * FROM __want WHERE {ID} IS NOT DISTINCT FROM ? LIMIT 1", [i]).fetchone()
            g = con.execute(f"SELECT * FROM __have WHERE {ID} IS NOT DISTINCT FROM ? LIMIT 1", [i]).fetchone()
            wrong.append({"id": i, "columns": [c for c, ok in zip(ref_names, r[1:]) if not ok],
                          "reference": [str(x) for x in w], "committed": [str(y) for y in g]})

        # a served answer equals its training row: every column but the
        # labels (null when served), null for null; and it says rightly
        # whether the event has a row
        served_ids = sorted({i for i, _, _ in served if i is not None})
        con.execute(f"CREATE TABLE __served_ids ({ID} {dict(cols)[idc] if idc in dict(cols) else 'BIGINT'})")
        if served_ids:
            con.executemany("INSERT INTO __served_ids VALUES (?)", [[i] for i in served_ids])
        in_want = set(ids(f"SELECT DISTINCT {ID} FROM __want WHERE {ID} IN (SELECT {ID} FROM __served_ids)"))
        have_rows = {r[got_names.index(idc)]: r for r in con.execute(
            f"SELECT * FROM __have WHERE {ID} IN (SELECT {ID} FROM __served_ids)").fetchall()}
        labels = {l for l in a.labels.split(",") if l}
        wrong_served, checked = [], 0
        for i, feats, fate in served:
            row = have_rows.get(i)
            will = (fate or {}).get("will_exist")
            if (i in in_want) != (will is True):
                checked += 1
                wrong_served.append({"id": i, "training_row": fate, "reference_has_row": i in in_want})
                continue
            if row is None:
                continue  # no training row (filtered; a lost one is counted above)
            checked += 1
            feats = feats or {}
            diff = sorted(set(got_names) ^ set(feats))
            for n_ in got_names:
                if n_ not in feats:
                    continue
                v, x = feats[n_], row[got_names.index(n_)]
                if n_ in labels:
                    ok = v is None
                elif v is None or x is None:
                    ok = v is None and x is None
                elif isinstance(x, datetime.datetime):
                    ok = epoch_ms(x) == epoch_ms(v)
                elif isinstance(x, (float, decimal.Decimal)):
                    ok = isinstance(v, (int, float)) and norm(float(v)) == norm(x)
                else:
                    ok = x == v
                if not ok:
                    diff.append(n_)
            if diff:
                wrong_served.append({"id": i, "columns": diff, "served": feats,
                                     "committed": [str(y) for y in row]})
        con.close()

    out = {
        "acknowledged_events": acknowledged,
        "id_conflicts": conflicts,
        "reference_rows": reference_rows,
        "committed_rows": committed,
        "lost": lost_n,
        "duplicated": duplicated,
        "wrong_rows": wrong_n,
        "unexpected": unexpected_n,
        "served_checked": checked,
        "wrong_served": len(wrong_served),
        "export_mismatches": export_mismatches,
        "examples": {
            "lost": lost,
            "unexpected": unexpected,
            "wrong_rows": wrong,
            "wrong_served": wrong_served[:5],
        },
    }
    print(json.dumps(out, default=str))
    bad = (out["lost"] + out["duplicated"] + out["wrong_rows"] + out["unexpected"]
           + out["wrong_served"] + export_mismatches)
    return 1 if bad or conflicts else 0


if __name__ == "__main__":
    sys.exit(main())
