"""The fleet side: the telemetry monitor, its store, alert rules and the fleet status."""
