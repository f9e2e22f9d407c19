"""poisonlab's server side: the ServerApp, central evaluation, run outputs, engines."""
