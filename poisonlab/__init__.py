"""poisonlab's Python API (filled in below)."""
