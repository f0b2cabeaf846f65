"""Raw feedback -> validated KTO rows. Plain functions, no Dagster.

readers.py (stream records out of any supported file) -> normalize.py (the rules, one record) ->
validate.py (one file: rows + quarantine, vectorized where possible) -> dataset.py (the union: dedup,
conflicts, length limit, grouped stratified split from split.py) ; hf.py snapshots a Hugging Face dataset.
"""

from kto_pipeline.data.dataset import DEFAULT_MAX_CHARS, build_from_validated, build_kto_dataset, label_balance
from kto_pipeline.data.normalize import BadRow, coerce_label, normalize
from kto_pipeline.data.readers import DataFileError, is_supported
from kto_pipeline.data.validate import ingest_file, validate_file

__all__ = [
    "DEFAULT_MAX_CHARS",
    "BadRow",
    "DataFileError",
    "build_from_validated",
    "build_kto_dataset",
    "coerce_label",
    "ingest_file",
    "is_supported",
    "label_balance",
    "normalize",
    "validate_file",
]
