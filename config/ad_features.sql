-- The canonical lockstep pipeline: per-user ad features plus a 15-minute
-- click label, from one event stream. See docs/sql.md for the dialect.
CREATE TABLE ad_events (
  event_id    BIGINT,
  user_id     TEXT,
  campaign_id BIGINT,
  kind        TEXT,          -- 'impression' | 'click'
  ip          TEXT,
  user_agent  TEXT,
  event_time  TIMESTAMP
) WITH (key = 'user_id', event_time = 'event_time', lateness = '30 seconds', shards = 16);

CREATE VIEW user_ad_features AS
SELECT event_id, user_id, campaign_id, event_time,
  COUNT(*) FILTER (WHERE kind = 'impression') OVER last_hour AS impressions_1h,
  COUNT(*) FILTER (WHERE kind = 'impression') OVER last_day  AS impressions_24h,
  COUNT(*) FILTER (WHERE kind = 'click')      OVER last_day  AS clicks_24h,
  SUM(CASE WHEN kind = 'click' THEN 1.0 ELSE 0.0 END) OVER last_day
    / (1 + COUNT(*) FILTER (WHERE kind = 'impression') OVER last_day) AS ctr_24h,
  MAX(CASE WHEN kind = 'click' THEN 1 ELSE 0 END) OVER (
    PARTITION BY user_id, campaign_id ORDER BY event_time
    RANGE BETWEEN CURRENT ROW AND INTERVAL '15' MINUTE FOLLOWING) AS label_click_15m
FROM ad_events
WINDOW
  last_hour AS (PARTITION BY user_id ORDER BY event_time
                RANGE BETWEEN INTERVAL '1' HOUR PRECEDING AND CURRENT ROW),
  last_day  AS (PARTITION BY user_id ORDER BY event_time
                RANGE BETWEEN INTERVAL '24' HOUR PRECEDING AND CURRENT ROW)
QUALIFY kind = 'impression';
