"""Training, evaluation and export of the routing model (the ``train`` extra; serving never imports it)."""
