"""offrl."""
