"""Signed update channels (alpha, beta, stable) and the release bundle format."""
