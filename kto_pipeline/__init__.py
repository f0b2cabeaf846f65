"""kto_pipeline: unpaired preference feedback -> KTO-aligned model -> merged weights, GGUF, release."""

__version__ = "0.1.0"
