"""Routing: requested model names to targets, texts to scores (one batched run) to a tier."""
