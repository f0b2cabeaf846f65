"""lineage.upstream: the materialization this run consumed, not whichever finished last in the instance."""

from pathlib import Path

import dagster as dg

from kto_pipeline.defs.lineage import upstream


def _folder(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".complete").write_text("")
    return folder


def _assets(root: Path):
    @dg.asset
    def lora_adapter() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"path": str(_folder(root, "A")), "data_version": "A"})

    @dg.asset(deps=[lora_adapter])
    def merged_model(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        # another run, with another config, finishes its adapter just now
        context.instance.report_runless_asset_event(
            dg.AssetMaterialization("lora_adapter", metadata={"path": str(_folder(root, "B")), "data_version": "B"})
        )
        return dg.MaterializeResult(metadata={"merged": upstream(context, "lora_adapter").version})

    return lora_adapter, merged_model


def test_an_asset_reads_the_upstream_its_own_run_materialized(tmp_path):
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(list(_assets(tmp_path)), instance=instance)
        merged = result.asset_materializations_for_node("merged_model")[0].metadata["merged"].value
        assert merged == "A"  # before: "B", the latest in the instance


@dg.asset(deps=["lora_adapter"])
def reader(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"read": upstream(context, "lora_adapter").version})


def test_an_upstream_outside_the_run_is_the_latest_and_must_be_complete(tmp_path):
    with dg.DagsterInstance.ephemeral() as instance:
        for name in ("A", "B"):
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    "lora_adapter", metadata={"path": str(_folder(tmp_path, name)), "data_version": name}
                )
            )
        result = dg.materialize([reader], instance=instance)
        assert result.asset_materializations_for_node("reader")[0].metadata["read"].value == "B"

        (tmp_path / "B" / ".complete").unlink()  # never finished, or cleaned away since: not to be read
        failed = dg.materialize([reader], instance=instance, raise_on_error=False)
        assert not failed.success
        assert "B is gone or incomplete" in failed.failure_data_for_node("reader").error.message
