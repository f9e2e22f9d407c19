"""poisonlab's client side: the ClientApp (honest or malicious)."""
