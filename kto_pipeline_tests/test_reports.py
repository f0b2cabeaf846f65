"""The report files assets hand each other: written and read back through kto_pipeline.reports only, and a file of
another schema version, from before versions, or missing a field fails with the file, the field and the versions."""

import dataclasses
import json

import pytest

from kto_pipeline import reports as r
from kto_pipeline_tests.test_long_rows import NEUTRAL_METRICS

LONG_ROWS = {
    "policy": "cut_prompt",
    "max_seq_length": 128,
    "chat_template": True,
    "tokenizer": "tiny",
    "trl_alone": "TRL alone keeps the start",
    "splits": {
        "train": {
            "rows": 10,
            "whole": 8,
            "prompt_cut": 1,
            "dropped": 1,
            "prompt_tokens_cut": 40,
            "turns_removed": 2,
            "tokens_needed": {"0.5": 60, "0.95": 150, "1.0": 300},
            "histogram": [{"tokens": "1-32", "rows": 3, "fits": True}, {"tokens": ">512", "rows": 0, "fits": False}],
        }
    },
    "dropped_rows_file": "/data/dropped_at_training/v1.parquet",
}
METRICS = {
    **NEUTRAL_METRICS,
    "steps": 8,
    "eval_loss": 0.69,
    "champion": {"adapter": "/art/lora_adapter/old", "eval_loss": 0.7},
    "micro_batch": 2,
    "processes": 1,
    "kl_logged_steps": 3,
    "kl_zero_steps": 1,
    "kl_zero_share": 1 / 3,
    "kl_pairs_same_completion": 0.0,
    "long_rows": LONG_ROWS,
    "history": [{"step": 1, "loss": 0.69}],
}
GGUF = {
    "file": "model-Q8_0.gguf",
    "path": "/art/gguf/x/model-Q8_0.gguf",
    "type": "Q8_0",
    "size_bytes": 1000,
    "sha256": "a" * 64,
    "parameters": 900,
    "tensor_bytes": 950,
    "bits_per_weight": 8.4,
    "tensor_types": {"Q8_0": 10, "F32": 5},
    "llama_cpp_version": "0.3.36",
    "build_seconds": 0.1,
    "verification": {"rel_error": 0.01, "top1_agreement": 0.99},
    "thresholds": {"max_rel_error": 0.05},
    "passed": True,
    "failures": [],
    "inputs": {"type": "Q8_0"},
}
EXAMPLES = [
    (r.TrainingMetrics, METRICS),
    (
        r.MergeInfo,
        {"base_model": "/cache/tiny", "merged_into": "tiny (16-bit)", "dtype": "float32", "parameters": 123},
    ),
    (r.GGUFResults, {"files": [{**GGUF, "modelfile": {"path": "/x/Modelfile", "chat_format": "chatml"}}]}),
    (r.ReleaseRecord, {"repo_id": "me/kto", "save_method": "lora", "weights": {}, "gguf": [], "lineage": {"a": "b"}}),
    (
        r.RawManifest,
        {"files": [{"folder": "/art/raw_file/x", "source": "a.jsonl", "records_in": 2, "valid": 2, "quarantined": 0}]},
    ),
]


@pytest.mark.parametrize(("cls", "data"), EXAMPLES, ids=lambda x: getattr(x, "__name__", ""))
def test_a_report_reads_back_what_was_written_under_its_usual_name(tmp_path, cls, data):
    path = cls.of(data).write(tmp_path)
    assert path == tmp_path / cls.FILE
    on_disk = json.loads(path.read_text())
    assert on_disk["schema_version"] == cls.SCHEMA_VERSION
    assert {k: v for k, v in on_disk.items() if k != "schema_version"} == data  # the keys other tools read
    assert cls.read(tmp_path) == cls.of(data) and cls.read(tmp_path).to_dict() == data


def test_nested_parts_are_typed_and_none_defaults_stay_out_of_the_file(tmp_path):
    metrics = r.TrainingMetrics.of(METRICS)
    assert metrics.long_rows.splits["train"].histogram[0] == r.LengthBin("1-32", 3, True)
    assert metrics.champion == r.ChampionEval("/art/lora_adapter/old", eval_loss=0.7)
    metrics.write(tmp_path)
    assert "skipped" not in json.loads((tmp_path / "metrics.json").read_text())["champion"]
    sidecar = r.GGUFFile.of(GGUF).write(r.GGUFFile.sidecar(tmp_path / "model-Q8_0.gguf"))
    assert sidecar.name == "model-Q8_0.gguf.verified.json"
    assert r.GGUFFile.read(sidecar).transformers_loadback is None
    assert "modelfile" not in json.loads(sidecar.read_text())


def test_a_file_from_an_older_run_names_the_file_both_versions_and_what_to_do(tmp_path):
    folder = tmp_path / "lora_adapter" / "ab12"
    folder.mkdir(parents=True)
    unversioned = {k: v for k, v in json.loads(r.TrainingMetrics.of(METRICS).write(folder).read_text()).items()}
    unversioned.pop("schema_version")
    (folder / "metrics.json").write_text(json.dumps(unversioned))  # as training wrote it before versions
    with pytest.raises(r.ReportError) as e:
        r.TrainingMetrics.read(folder)
    assert str(e.value) == (
        f"{folder / 'metrics.json'}: no schema version (an older kto_pipeline), this kto_pipeline reads "
        f"{r.TrainingMetrics.SCHEMA_VERSION}: materialize lora_adapter again"
    )
    (folder / "metrics.json").write_text(json.dumps({**unversioned, "schema_version": 99}))
    with pytest.raises(r.ReportError, match=r"metrics.json: schema version 99, this kto_pipeline reads 1: materialize"):
        r.TrainingMetrics.read(folder)


def test_a_missing_or_unknown_field_is_named_never_a_key_error(tmp_path):
    data = {"schema_version": 1, **METRICS}
    del data["micro_batch"]
    (tmp_path / "metrics.json").write_text(json.dumps(data))
    with pytest.raises(r.ReportError, match=r"metrics.json: required field 'micro_batch' \(per-device batch"):
        r.TrainingMetrics.read(tmp_path)
    nested = {**METRICS, "long_rows": {k: v for k, v in LONG_ROWS.items() if k != "policy"}}
    (tmp_path / "metrics.json").write_text(json.dumps({"schema_version": 1, **nested}))
    with pytest.raises(r.ReportError, match=r"required field 'long_rows.policy'"):
        r.TrainingMetrics.read(tmp_path)
    with pytest.raises(
        r.ReportError,
        match=r"unknown field\(s\) new_metric: its writer and kto_pipeline.reports.TrainingMetrics disagree",
    ):
        r.TrainingMetrics.of({**METRICS, "new_metric": 1.0})  # a writer ahead of reports.py fails at once
    (tmp_path / "merge_info.json").write_text(json.dumps([1, 2]))
    with pytest.raises(r.ReportError, match=r"merge_info.json: holds a JSON list, not an object"):
        r.MergeInfo.read(tmp_path)


def test_every_field_is_documented_once_and_the_adapter_metadata_comes_from_the_marks():
    for cls in (r.TrainingMetrics, r.DatasetReport, r.FileReport, r.MergeInfo, r.GGUFFile, r.ReleaseRecord):
        assert all(f.metadata.get("doc") for f in dataclasses.fields(cls)), cls
    shown = r.TrainingMetrics.metadata_fields()
    assert {"steps", "eval_loss", "kl_zero_share", "tokens_per_s", "peak_vram_gib"} <= set(shown)
    assert "history" not in shown and "micro_batch" not in shown


def test_a_check_on_an_adapter_from_an_older_run_fails_with_the_file_and_versions(tmp_path):
    """Through the lineage helper: the check gets its upstream's typed report, or a failure that says why."""
    import dagster as dg

    from kto_pipeline.defs.checks import eval_loss
    from kto_pipeline.defs.resources import QualityGates

    folder = tmp_path / "lora_adapter" / "ab12"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(METRICS))  # no schema_version
    (folder / ".complete").write_text("")
    with dg.DagsterInstance.ephemeral() as instance:
        instance.report_runless_asset_event(
            dg.AssetMaterialization("lora_adapter", metadata={"path": str(folder), "data_version": "ab12"})
        )
        run = dict(instance=instance, raise_on_error=False, selection=dg.AssetSelection.checks(eval_loss))
        result = dg.materialize([eval_loss], resources={"quality_gates": QualityGates()}, **run)
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
        assert f"{folder / 'metrics.json'}: no schema version" in failure.message
        assert "this kto_pipeline reads 1: materialize lora_adapter again" in failure.message

        r.TrainingMetrics.of(METRICS).write(folder)
        result = dg.materialize([eval_loss], resources={"quality_gates": QualityGates(max_eval_loss=1.0)}, **run)
        (check,) = result.get_asset_check_evaluations()
        assert check.passed and check.metadata["released_eval_loss"].value == 0.7
