"""Configuration discovery: snapshots of the registry, versioned, checked, and published to
executors over xDS."""
