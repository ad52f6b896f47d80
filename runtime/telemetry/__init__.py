"""Device telemetry: messages, the disk spool, windows of aggregates, and the MQTT link."""
