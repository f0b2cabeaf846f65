"""The thin Dagster layer: each asset finds its inputs, calls one plain function, reports metadata."""
