"""Merging and exporting trained weights. Plain modules, no Dagster."""
