#!/usr/bin/env python3
"""The canonical view's features in PyFlink, as a peer for scripts/vs_duckdb.py.

Run with an interpreter that has `apache-flink` (PyPI) installed; it starts a
local mini-cluster. The events are first converted to CSV (not timed: the
PyFlink wheel bundles no Parquet format), then one Flink SQL job in batch
mode computes the same windows as config/ad_features.sql over the CSV and
writes its rows as CSV. Flink SQL has no FILTER on window aggregates and no
QUALIFY, so those are spelled as CASE and an outer WHERE; the frames are the
same, over the event time in epoch milliseconds (Flink 2.3's batch planner
fails to compile a RANGE frame over a TIMESTAMP: "Cannot cast TimestampData
to Long"). Prints the job's time and row count.
"""
import argparse
import os
import shutil
import time

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from pyflink.table import EnvironmentSettings, TableEnvironment

QUERY = """
INSERT INTO features
SELECT event_id, user_id, campaign_id, event_time, impressions_1h, impressions_24h, clicks_24h,
       ctr_24h, label_click_15m
FROM (
  SELECT event_id, user_id, campaign_id, kind, event_time, event_ms,
    SUM(CASE WHEN kind = 'impression' THEN 1 ELSE 0 END) OVER (
      PARTITION BY user_id ORDER BY event_ms
      RANGE BETWEEN 3600000 PRECEDING AND CURRENT ROW) AS impressions_1h,
    SUM(CASE WHEN kind = 'impression' THEN 1 ELSE 0 END) OVER (
      PARTITION BY user_id ORDER BY event_ms
      RANGE BETWEEN 86400000 PRECEDING AND CURRENT ROW) AS impressions_24h,
    SUM(CASE WHEN kind = 'click' THEN 1 ELSE 0 END) OVER (
      PARTITION BY user_id ORDER BY event_ms
      RANGE BETWEEN 86400000 PRECEDING AND CURRENT ROW) AS clicks_24h,
    SUM(CASE WHEN kind = 'click' THEN CAST(1 AS DOUBLE) ELSE CAST(0 AS DOUBLE) END) OVER (
      PARTITION BY user_id ORDER BY event_ms
      RANGE BETWEEN 86400000 PRECEDING AND CURRENT ROW)
      / (1 + SUM(CASE WHEN kind = 'impression' THEN 1 ELSE 0 END) OVER (
      PARTITION BY user_id ORDER BY event_ms
      RANGE BETWEEN 86400000 PRECEDING AND CURRENT ROW)) AS ctr_24h,
    MAX(CASE WHEN kind = 'click' THEN 1 ELSE 0 END) OVER (
      PARTITION BY user_id, campaign_id ORDER BY event_ms
      RANGE BETWEEN CURRENT ROW AND 900000 FOLLOWING) AS label_click_15m
  FROM ad_events
) WHERE kind = 'impression'
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True, help="events (.parquet)")
    ap.add_argument("--output", required=True, help="a directory for the rows (replaced)")
    ap.add_argument("--parallelism", type=int, default=2)
    a = ap.parse_args()
    csv_in = a.output + ".events.csv"
    table = pq.read_table(a.input, columns=["event_id", "user_id", "campaign_id", "kind", "event_time"])
    table = table.append_column("event_ms", table.column("event_time").cast("int64"))
    pcsv.write_csv(table, csv_in, pcsv.WriteOptions(include_header=False))
    shutil.rmtree(a.output, ignore_errors=True)

    t0 = time.perf_counter()
    env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    conf = env.get_config()
    conf.set("parallelism.default", str(a.parallelism))
    conf.set("table.exec.resource.default-parallelism", str(a.parallelism))
    env.execute_sql(f"""
        CREATE TABLE ad_events (
          event_id BIGINT, user_id STRING, campaign_id BIGINT, kind STRING, event_time TIMESTAMP(3),
          event_ms BIGINT
        ) WITH ('connector' = 'filesystem', 'path' = '{os.path.abspath(csv_in)}', 'format' = 'csv')""")
    env.execute_sql(f"""
        CREATE TABLE features (
          event_id BIGINT, user_id STRING, campaign_id BIGINT, event_time TIMESTAMP(3),
          impressions_1h BIGINT, impressions_24h BIGINT, clicks_24h BIGINT, ctr_24h DOUBLE,
          label_click_15m INT
        ) WITH ('connector' = 'filesystem', 'path' = '{os.path.abspath(a.output)}', 'format' = 'csv')""")
    env.execute_sql(QUERY).wait()
    elapsed = time.perf_counter() - t0
    rows = sum(sum(1 for _ in open(os.path.join(d, f)))
               for d, _, fs in os.walk(a.output) for f in fs if not f.startswith("."))
    os.remove(csv_in)
    print(f"pyflink: {table.num_rows} events in {elapsed:.2f}s ({table.num_rows / elapsed:,.0f} events/s), "
          f"{rows} rows")


if __name__ == "__main__":
    main()
