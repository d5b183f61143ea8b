"""The operators' dashboard: a separate process beside ingestion that reads the running
instance's HTTP API and the broker's alert topic and pushes what it sees to browsers with
server-sent events (`fabtier dashboard --config F [--port P]`).

- `dashboard.views`: pure: the SQL the pages need, bucket merging, recipe limits per bucket.
- `dashboard.instance`: the instance's HTTP API (bearer token), degrading to SQL where a
  route is not there yet.
- `dashboard.acks`: acknowledgements kept by the dashboard when the instance has no ack route.
- `dashboard.alertfeed`: the broker's alert topic (paho, `core.brokerconn` for TLS and login).
- `dashboard.live`: the feeds (overview, machine, alerts, status), each polled only while a
  browser watches it, and their fan-out to the browsers (`Hub`).
- `dashboard.app`: the Starlette app: pages, login, data, event streams, static files, uPlot.
"""
