-- Dashboards over the `analytics` schema, as a read-only analyst (`rollcall grant-analyst`).
-- Grafana: a PostgreSQL data source with that login; `$event` is a dashboard variable
-- (query: SELECT event FROM analytics.occupancy), `$__timeFilter(col)` Grafana's time macro.
-- Metabase: paste into a native question with `$event` replaced by {{event}}, or build the
-- same questions in the notebook editor. tests/test_bi_recipe.py runs every query here as an
-- analyst login, with the macros expanded.

-- Inside over time (Grafana: time series)
SELECT minute AS "time", inside FROM analytics.occupancy_timeline
WHERE event = '$event' AND $__timeFilter(minute) ORDER BY minute;

-- Inside now, peak and when (Grafana: stat)
SELECT inside_now, peak, peak_at FROM analytics.occupancy WHERE event = '$event';

-- Paid per currency (Grafana: bar gauge; Metabase: bar chart)
SELECT currency, sum(amount) AS amount, count(*) AS payments FROM analytics.payments
WHERE event = '$event' GROUP BY currency ORDER BY currency;

-- Payments per local day in Warsaw (Grafana: bar chart)
SELECT (paid_at AT TIME ZONE 'Europe/Warsaw')::date AS day, currency, sum(amount) AS amount
FROM analytics.payments WHERE event = '$event' GROUP BY day, currency ORDER BY day, currency;

-- Registrations by a form field (t-shirt sizes, diets, ...: any field JTE sent)
SELECT f.value AS size, count(*) AS attendees FROM analytics.roster_fields f
JOIN analytics.roster r USING (event, attendee_id)
WHERE f.event = '$event' AND f.field = 'tshirt' AND r.status = 'registered'
GROUP BY f.value ORDER BY attendees DESC;

-- Check-ins per hour, Warsaw time (Grafana: bar chart)
SELECT date_trunc('hour', at AT TIME ZONE 'Europe/Warsaw') AS hour, count(*) AS entered
FROM analytics.occupancy_changes WHERE event = '$event' AND delta > 0
GROUP BY hour ORDER BY hour;
