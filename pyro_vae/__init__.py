"""pyro-vae."""
