"""poisonlab's command-line entry points."""
