"""Applications built on the library: the ``pyro-vae`` command line, the estimator comparison,
``pyro-vae evaluate`` and ``diagnose``, and the loss-pitfall experiments."""
