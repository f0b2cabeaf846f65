"""PostgreSQL as the instance storage: the shipped dagster_postgres.yaml on a throwaway Debian `postgresql` server."""

from __future__ import annotations

import pytest

from kto_pipeline_tests.postgres import PG_VARS, Cluster, InstanceHomes, alive


def test_shipped_postgres_config_runs_the_instance_on_postgres(postgres, tmp_path, monkeypatch):
    """Runs, events and the gpu pool live in PostgreSQL; where and how to connect is read from the environment."""
    import dagster as dg
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    with InstanceHomes("postgres", postgres) as homes:
        env = homes.new(tmp_path / "home")
    assert env["KTO_PG_PASSWORD"] not in (tmp_path / "home" / "dagster.yaml").read_text()
    for var in PG_VARS:
        monkeypatch.setenv(var, env[var])
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        instance.event_log_storage.initialize_concurrency_limit_to_default("gpu")
        first = instance.event_log_storage.claim_concurrency_slot("gpu", "run-a", "lora_adapter")
        second = instance.event_log_storage.claim_concurrency_slot("gpu", "run-b", "lora_adapter")
        assert first.is_claimed and not second.is_claimed  # the shipped pool limit of 1


def test_missing_connection_variable_fails_naming_it(postgres, tmp_path, monkeypatch):
    import dagster as dg

    with InstanceHomes("postgres", postgres) as homes:
        env = homes.new(tmp_path / "home")
    for var in PG_VARS:
        monkeypatch.setenv(var, env[var])
    monkeypatch.delenv("KTO_PG_PASSWORD")
    with pytest.raises(Exception, match="KTO_PG_PASSWORD"):
        dg.DagsterInstance.from_config(env["DAGSTER_HOME"])


def test_throwaway_cluster_leaves_no_process_or_folder(postgres):
    cluster = Cluster.start()
    pid, root = cluster.pid, cluster.root
    assert pid is not None and alive(pid)
    cluster.create_database("probe")
    cluster.stop()
    assert not alive(pid) and not root.exists()
