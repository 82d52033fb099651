#!/usr/bin/env python3
"""A second ad stream, generated apart from `lockstep gen`, for benchmarks.

`lockstep gen` draws users from a Zipf(1.1) distribution over a small
population (the heaviest users hold ~14% of all events) with ~5% clicks.
This generator makes a different shape on purpose, so a speed-up tuned to
our own generator shows up as such:

- users: 200k by default, drawn from a flat distribution with a mild head
  (90% uniform over all users, 10% over the first 1% of them);
- event mix: ~18% clicks, the rest impressions;
- campaigns: 5,000, uniform;
- time: bursts (sessions of 1-40 events, 0.2-5 s apart, per user) starting
  as a Poisson stream (~10 hours for 2M events), so a user's events come in
  clumps;
- ids: `user-<8 hex digits>` keys, IPv6-looking addresses, short agents.

Events are written in event-time order (no lateness), so the dialect's
semantics equal standard SQL and DuckDB's rows can be compared one to one.
Pure function of --seed. Writes Parquet (snappy), the `ad_events` schema.
"""
import argparse
import heapq
import random

import pyarrow as pa
import pyarrow.parquet as pq

START_MS = 1_717_200_000_000  # 2024-06-01T00:00:00Z
AGENTS = [
    "curl/8.5.0",
    "okhttp/4.12.0",
    "Dalvik/2.1.0 (Linux; U; Android 14)",
    "AppleCoreMedia/1.0.0.21E236 (iPhone; U; CPU OS 17_4 like Mac OS X)",
    "Mozilla/5.0 (X11; Linux x86_64)",
]


def generate(events: int, users: int, seed: int):
    rng = random.Random(seed)
    head = max(1, users // 100)
    ids = [f"user-{rng.getrandbits(32):08x}" for _ in range(users)]
    ips = [f"2001:db8:{rng.getrandbits(16):x}::{rng.getrandbits(16):x}" for _ in range(users)]
    agents = [AGENTS[rng.randrange(len(AGENTS))] for _ in range(users)]
    # A heap of sessions ordered by their next event's time: each session is
    # one user emitting a burst of events.
    heap = []
    t = START_MS
    out_user, out_campaign, out_kind, out_time = [], [], [], []
    n = 0
    while n < events:
        # a new session starts every ~400 ms of stream time
        t += int(rng.expovariate(1 / 400.0))
        u = rng.randrange(head) if rng.random() < 0.10 else rng.randrange(users)
        heapq.heappush(heap, (t, u, rng.randint(1, 40), rng.randrange(1, 5001)))
        while heap and heap[0][0] <= t and n < events:
            when, u, left, campaign = heapq.heappop(heap)
            out_user.append(u)
            out_campaign.append(campaign)
            out_kind.append("click" if rng.random() < 0.18 else "impression")
            out_time.append(when)
            n += 1
            if left > 1:
                nxt = when + rng.randint(200, 5000)
                if rng.random() < 0.3:
                    campaign = rng.randrange(1, 5001)
                heapq.heappush(heap, (nxt, u, left - 1, campaign))
    order = sorted(range(n), key=lambda i: out_time[i])
    return pa.table(
        {
            "event_id": pa.array(range(1, n + 1), pa.int64()),
            "user_id": pa.array([ids[out_user[i]] for i in order], pa.string()),
            "campaign_id": pa.array([out_campaign[i] for i in order], pa.int64()),
            "kind": pa.array([out_kind[i] for i in order], pa.string()),
            "ip": pa.array([ips[out_user[i]] for i in order], pa.string()),
            "user_agent": pa.array([agents[out_user[i]] for i in order], pa.string()),
            "event_time": pa.array([out_time[i] for i in order], pa.timestamp("ms")),
        }
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    table = generate(a.events, a.users, a.seed)
    pq.write_table(table, a.out, compression="snappy")
    print(f"wrote {table.num_rows} events to {a.out}")


if __name__ == "__main__":
    main()
