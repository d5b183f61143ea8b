"""Ingest: MQTT messages in, decoded into columnar batches, logged durably, then acknowledged."""
