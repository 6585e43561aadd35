"""Datasets: schema, raw readers, preprocessing, synthetic generator and the Batch loader."""
