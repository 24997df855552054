"""What people thought of runs."""
