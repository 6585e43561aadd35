"""Artifact writer / reader and the serving model."""
