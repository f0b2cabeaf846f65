"""Find what an upstream asset produced: its latest materialization's path and data version."""


from pathlib import Path

import dagster as dg


def upstream(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, key: str) -> tuple[Path, str]:
    event = context.instance.get_latest_materialization_event(dg.AssetKey(key))
    if event is None or event.asset_materialization is None:
        raise dg.Failure(f"{key} has not been materialized yet: materialize it first (or select it too).")
    meta = event.asset_materialization.metadata
    return Path(meta["path"].value), str(meta["data_version"].value)
