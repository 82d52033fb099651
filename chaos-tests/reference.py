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


def kind_of(duck_type):
    """How a column's values are compared: floats by bits, timestamps by
    their millisecond, anything else by value."""
    t = duck_type.upper()
    if t.startswith(("DOUBLE", "FLOAT", "REAL", "DECIMAL", "NUMERIC")):
        return "float"
    if t.startswith("TIMESTAMP") or t == "DATE":
        return "time"
    return "value"


def q(name):
    return '"' + name.replace('"', '""') + '"'


def normalized(con, rel, names):
    """A SELECT list over `rel` whose values compare as norm() does."""
    types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {rel})").fetchall())
    out = []
    for n in names:
        k = kind_of(types[n])
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
        con.execute(f"CREATE TABLE acked AS SELECT * FROM read_json(?, format = 'newline_delimited', columns = {spec})",
                    [staged])
        os.remove(staged)
        con.execute(f"""CREATE TABLE ranked AS SELECT *,
            row_number() OVER (PARTITION BY {q(idc)} ORDER BY __seq) AS __rank,
            first(__digest) OVER (PARTITION BY {q(idc)} ORDER BY __seq) AS __first
            FROM acked""")
        con.execute("DROP TABLE acked")
        acknowledged, conflicts = con.execute(
            "SELECT count(*) FILTER (WHERE __rank = 1), count(*) FILTER (WHERE __digest <> __first) FROM ranked"
        ).fetchone()
        casts = ", ".join(
            f"CAST(replace(rtrim({q(c)}, 'Z'), 'T', ' ') AS {t})" if json_cols[c] == "VARCHAR" and bare_type(t).upper().startswith("TIMESTAMP")
            else f"CAST({q(c)} AS {t})"
            for c, t in cols)
        con.execute(f"INSERT INTO {table} SELECT {casts} FROM ranked WHERE __rank = 1")
        con.execute("DROP TABLE ranked")

        con.execute(f"CREATE TABLE ref AS {select}")
        files = sorted(glob.glob(os.path.join(a.segments, "*.parquet")))
        if files:
            con.execute("CREATE TABLE got AS SELECT * FROM read_parquet(?)", [files])
        else:
            con.execute("CREATE TABLE got AS SELECT * FROM ref LIMIT 0")
        ref_names = [r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE ref)").fetchall()]
        got_names = [r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE got)").fetchall()]

        export_mismatches = 0
        if a.export:
            con.execute("CREATE TABLE exported AS SELECT * FROM read_parquet(?)", [a.export])
            ex_names = [r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE exported)").fetchall()]
            if ex_names != got_names:
                export_mismatches = max(1, con.execute("SELECT count(*) FROM exported").fetchone()[0])
            else:
                g, e = normalized(con, "got", got_names), normalized(con, "exported", got_names)
                export_mismatches = con.execute(f"""SELECT count(*) FROM (
                    (SELECT {g} FROM got EXCEPT ALL SELECT {e} FROM exported)
                    UNION ALL
                    (SELECT {e} FROM exported EXCEPT ALL SELECT {g} FROM got))""").fetchone()[0]
        if ref_names != got_names:
            print(json.dumps({"error": f"columns differ: reference {ref_names}, committed {got_names}"}))
            return 1

        # rows of the excluded keys (and of other runs' keys) on neither side
        key_type = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE ref)").fetchall())[a.exclude_column]
        keep, params = "TRUE", []
        if key_type.upper().startswith("VARCHAR"):
            keep = f"NOT coalesce(starts_with({q(a.exclude_column)}, ?), false)"
            params = [a.exclude_prefix]
            if a.only_prefix:
                keep += f" AND coalesce(starts_with({q(a.exclude_column)}, ?), false)"
                params.append(a.only_prefix)
        elif a.only_prefix:
            keep = "FALSE"
        con.execute(f"CREATE TABLE want AS SELECT * FROM ref WHERE {keep}", params)
        con.execute(f"CREATE TABLE have_all AS SELECT * FROM got WHERE {keep}", params)
        con.execute(f"""CREATE TABLE have AS SELECT * EXCLUDE (__rank) FROM (
            SELECT *, row_number() OVER (PARTITION BY {q(idc)}) AS __rank FROM have_all) WHERE __rank = 1""")
        reference_rows = con.execute(f"SELECT count(DISTINCT {q(idc)}) FROM want").fetchone()[0]
        committed, distinct = con.execute(f"SELECT count(*), count(DISTINCT {q(idc)}) FROM have_all").fetchone()
        duplicated = committed - distinct

        def ids(query):
            return [r[0] for r in con.execute(query).fetchall()]

        lost_n, = con.execute(f"SELECT count(DISTINCT {q(idc)}) FROM want WHERE {q(idc)} NOT IN (SELECT {q(idc)} FROM have)").fetchone()
        lost = ids(f"SELECT DISTINCT {q(idc)} FROM want WHERE {q(idc)} NOT IN (SELECT {q(idc)} FROM have) ORDER BY 1 LIMIT 10")
        unexpected_n, = con.execute(f"SELECT count(*) FROM have WHERE {q(idc)} NOT IN (SELECT {q(idc)} FROM want)").fetchone()
        unexpected = ids(f"SELECT {q(idc)} FROM have WHERE {q(idc)} NOT IN (SELECT {q(idc)} FROM want) ORDER BY 1 LIMIT 10")

        # every column compared as norm() compares it
        wt = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE want)").fetchall())
        ht = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE have)").fetchall())
        same = []
        for c in ref_names:
            w, h = f"w.{q(c)}", f"h.{q(c)}"
            kinds = {kind_of(wt[c]), kind_of(ht[c])}
            if "float" in kinds:
                wd, hd = f"CAST({w} AS DOUBLE)", f"CAST({h} AS DOUBLE)"
                same.append(f"({wd} IS NOT DISTINCT FROM {hd} AND ({wd} IS NULL OR signbit({wd}) = signbit({hd})))")
            elif "time" in kinds:
                same.append(f"(epoch_ms(CAST({w} AS TIMESTAMP)) IS NOT DISTINCT FROM epoch_ms(CAST({h} AS TIMESTAMP)))")
            else:
                same.append(f"({w} IS NOT DISTINCT FROM {h})")
        flags = ", ".join(f"{x} AS __same_{k}" for k, x in enumerate(same))
        con.execute(f"""CREATE TABLE compared AS SELECT w.{q(idc)} AS __id, {flags}
            FROM (SELECT DISTINCT ON ({q(idc)}) * FROM want) w JOIN have h USING ({q(idc)})""")
        all_same = " AND ".join(f"__same_{k}" for k in range(len(same))) or "TRUE"
        wrong_n, = con.execute(f"SELECT count(*) FROM compared WHERE NOT ({all_same})").fetchone()
        wrong = []
        for r in con.execute(f"SELECT * FROM compared WHERE NOT ({all_same}) ORDER BY __id LIMIT 5").fetchall():
            i = r[0]
            w = con.execute(f"SELECT * FROM want WHERE {q(idc)} = ? LIMIT 1", [i]).fetchone()
            g = con.execute(f"SELECT * FROM have WHERE {q(idc)} = ? LIMIT 1", [i]).fetchone()
            wrong.append({"id": i, "columns": [c for c, ok in zip(ref_names, r[1:]) if not ok],
                          "reference": [str(x) for x in w], "committed": [str(y) for y in g]})

        # a served answer equals its training row: every column but the
        # labels (null when served), null for null; and it says rightly
        # whether the event has a row
        served_ids = sorted({i for i, _, _ in served})
        con.execute(f"CREATE TABLE served_ids ({q(idc)} {dict(cols)[idc] if idc in dict(cols) else 'BIGINT'})")
        if served_ids:
            con.executemany("INSERT INTO served_ids VALUES (?)", [[i] for i in served_ids])
        in_want = set(ids(f"SELECT DISTINCT {q(idc)} FROM want WHERE {q(idc)} IN (SELECT {q(idc)} FROM served_ids)"))
        have_rows = {r[got_names.index(idc)]: r for r in con.execute(
            f"SELECT * FROM have WHERE {q(idc)} IN (SELECT {q(idc)} FROM served_ids)").fetchall()}
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
