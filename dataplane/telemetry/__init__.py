"""What leaves an executor about its runs: telemetry records, the outbox relay."""
