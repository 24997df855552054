"""The executor's configuration: received over xDS, validated, kept as last-known-good."""
