"""Config dataclasses, presets, the seed's Python API, and the Dagster config derived from them."""

import dataclasses

import pytest

from kto_pipeline.config import PRESETS, SECTIONS, Config, apply_overrides, get_7b_config, get_config
from kto_pipeline.defs.config import TrainConfig


def test_seed_python_api():
    config = get_7b_config()
    config.training.learning_rate = 1e-6
    config.training.num_train_epochs = 2
    assert config.model.model_name == PRESETS["7b"]["model"]["model_name"]
    assert config.training.per_device_train_batch_size * config.training.gradient_accumulation_steps == 32
    custom = Config()
    custom.lora.r = 32
    assert custom.lora.r == 32 and Config().lora.r == 16  # no shared mutable defaults
    assert Config.from_dict(config.to_dict()) == config


def test_every_field_is_documented():
    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_overrides_and_errors():
    c = apply_overrides(get_config("tiny"), {"training": {"learning_rate": 0.1, "seed": None}})
    assert c.training.learning_rate == 0.1 and c.training.seed == get_config("tiny").training.seed
    assert c.fingerprint() != get_config("tiny").fingerprint()
    with pytest.raises(ValueError, match="unknown field training.lr"):
        apply_overrides(c, {"training": {"lr": 1}})
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("70b")


def test_dagster_config_mirrors_dataclasses():
    tc = TrainConfig(preset="3b", training={"max_steps": 7})
    resolved = tc.resolve()
    assert resolved.training.max_steps == 7
    assert resolved.model.model_name == PRESETS["3b"]["model"]["model_name"]
    for section, cls in SECTIONS.items():
        derived = type(getattr(tc, section)).model_fields
        assert set(derived) == {f.name for f in dataclasses.fields(cls)}
        assert all(derived[name].description for name in derived)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"model": {"use_unsloth": "Never"}},
            "model.use_unsloth must be one of ['auto', 'always', 'never'], not 'Never'",
        ),
        (
            {"model": {"dtype": "bf16"}},
            "model.dtype must be one of ['auto', 'bfloat16', 'float16', 'float32'], not 'bf16'",
        ),
        ({"training": {"per_device_train_batch_size": 1}}, "training.per_device_train_batch_size must be at least 2"),
        (
            {"training": {"num_processes": 3}},
            "training.num_processes=3 must divide training.gradient_accumulation_steps=8",
        ),
        ({"training": {"desirable_weight": -0.5}}, "training.desirable_weight must be >= 0"),
        (
            {"training": {"precompute_ref_log_probs": True, "num_processes": 2}},
            "training.precompute_ref_log_probs=True does not work with training.num_processes=2",
        ),
        (
            {"training": {"launcher": "slurm"}},
            "training.launcher must be one of ['local', 'torchrun', 'ray'], not 'slurm'",
        ),
        ({"training": {"desirable_weight": 0.0, "undesirable_weight": 0.0}}, "both 0"),
        (
            {"training": {"memory_budget_gib": 16}, "model": {"model_name": "someone/unknown-7b"}},
            "training.memory_budget_gib needs the model's architecture: no architecture known for 'someone/unknown-7b'",
        ),
    ],
)
def test_invalid_config_fails_before_any_model_loads(overrides, message):
    with pytest.raises(ValueError) as e:
        get_config("7b", overrides)
    assert message in str(e.value)


def test_a_zero_weight_is_a_weight_not_unset():
    from kto_pipeline.training.trainer import kto_weights

    config = get_config("tiny", {"training": {"desirable_weight": 0.0}})
    dw, uw = kto_weights(config, [True, False, False, False])
    assert dw == 0.0 and uw > 0  # before: `0.0 or auto` silently used the derived weight
    assert kto_weights(get_config("tiny"), [True, False])[0] > 0


def test_each_data_parallel_process_gets_a_valid_share_of_the_run():
    from kto_pipeline.training.memory import pick_micro_batch
    from kto_pipeline.training.trainer import per_process

    config = get_config("tiny", {"training": {"num_processes": 2, "gradient_accumulation_steps": 2}})
    share = per_process(config, 2)
    assert share.training.gradient_accumulation_steps == 1 and share.training.num_processes == 1
    big = get_config("7b", {"training": {"num_processes": 4, "gradient_accumulation_steps": 8}})
    micro, accum = pick_micro_batch(big, 80.0)
    assert accum % 4 == 0 and micro * accum == 32


def test_the_environment_is_read_when_used_not_at_import(tmp_path, monkeypatch):
    import dagster as dg

    from kto_pipeline.defs.automation import build_raw_files_sensor
    from kto_pipeline.defs.resources import ArtifactStore
    from kto_pipeline.defs.training import gpu_lock_path

    monkeypatch.setenv("KTO_RAW_DIR", str(tmp_path / "later"))
    monkeypatch.setenv("KTO_GPU_LOCK", str(tmp_path / "gpu.lock"))
    monkeypatch.setenv("KTO_ARTIFACT_ROOT", str(tmp_path / "art"))
    assert gpu_lock_path() == tmp_path / "gpu.lock"
    assert ArtifactStore().path == tmp_path / "art" and ArtifactStore(root=str(tmp_path / "x")).path == tmp_path / "x"
    sensor = build_raw_files_sensor(name="env_sensor")
    with dg.DagsterInstance.ephemeral() as instance:
        tick = sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, resources={"artifacts": ArtifactStore()})
        )
    assert tick.skip_message == f"{tmp_path / 'later'} does not exist yet"


def test_each_launcher_starts_its_own_command():
    """local keeps today's meaning (torchrun once there are several processes); torchrun always; ray: the job driver,
    which starts the Ray Train workers itself."""
    from kto_pipeline.training.run import launch_command

    torchrun = ["py", "-m", "torch.distributed.run", "--standalone"]
    assert launch_command("py", 1) == launch_command("py", 1, "local") == ["py", "-m", "kto_pipeline.training.run"]
    assert launch_command("py", 2, "local")[:4] == torchrun and "--nproc-per-node=2" in launch_command("py", 2)
    assert launch_command("py", 1, "torchrun")[:4] == torchrun and "--nproc-per-node=1" in launch_command(
        "py", 1, "torchrun"
    )
    assert launch_command("py", 2, "ray") == ["py", "-m", "kto_pipeline.training.ray_job"]


def test_launcher_is_a_validated_choice_in_dagster_config_and_the_cli():
    import argparse

    import pydantic

    from kto_pipeline.cli.train import add_parser, run_config
    from kto_pipeline.defs.config import TrainConfig

    assert TrainConfig(training={"launcher": "ray"}).resolve().training.launcher == "ray"
    with pytest.raises(pydantic.ValidationError, match="launcher"):
        TrainConfig(training={"launcher": "Ray"})
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="cmd"))
    args = p.parse_args(["train", "--launcher", "ray", "--num-processes", "2"])
    assert run_config(args)["ops"]["lora_adapter"]["config"]["training"] == {"launcher": "ray", "num_processes": 2}
    with pytest.raises(SystemExit):
        p.parse_args(["train", "--launcher", "slurm"])
    # where it runs does not change the weights: a torchrun run's adapter is the Ray run's
    assert get_config("tiny", {"training": {"launcher": "ray"}}).fingerprint() == get_config("tiny").fingerprint()


def test_ray_launcher_without_an_address_says_what_is_missing(monkeypatch):
    from kto_pipeline.defs.resources import RayCluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ValueError, match="ray_cluster.address is empty and RAY_ADDRESS is not set"):
        RayCluster().run(context=None, extras={}, entrypoint=["python"])


def _import_graph() -> dict[str, set[str]]:
    """kto_pipeline module -> the kto_pipeline modules it imports, anywhere in it (a function-level import is
    still an edge: a circle hidden inside a function is a circle)."""
    import ast
    from pathlib import Path

    import kto_pipeline

    root = Path(kto_pipeline.__file__).parent
    files = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def module_of(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        names: list[str] = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names += [f"{base}.{a.name}" for a in node.names]
        graph[module] = {m for m in map(module_of, names) if m and m != module}
    return graph


def test_no_import_circle_in_kto_pipeline():
    import graphlib

    graph = _import_graph()
    assert "kto_pipeline.config" in graph["kto_pipeline.training.memory"]  # the graph sees real edges
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import circle: {' -> '.join(e.args[1])}") from None
    # the architecture table stands alone: config and the planner both read it, it reads neither
    assert "kto_pipeline.training.arch" in graph["kto_pipeline.config"]
    assert not graph["kto_pipeline.training.arch"] & {"kto_pipeline.config", "kto_pipeline.training.memory"}


def test_default_gguf_types_are_defined_once():
    import argparse
    import inspect

    from kto_pipeline.cli.upload import add_parser
    from kto_pipeline.defs.export import GGUFConfig
    from kto_pipeline.defs.release import ReleaseConfig
    from kto_pipeline.export.gguf import DEFAULT_QUANTIZATIONS, QUANT_TYPES, export_gguf

    assert set(DEFAULT_QUANTIZATIONS) <= set(QUANT_TYPES)
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="cmd"))
    upload = p.parse_args(["upload", "path", "me/repo"]).gguf_quantizations
    built = GGUFConfig().quantizations
    assert built == ReleaseConfig().gguf_types == upload == list(DEFAULT_QUANTIZATIONS)
    assert tuple(inspect.signature(export_gguf).parameters["quantizations"].default) == DEFAULT_QUANTIZATIONS
    built.append("Q2_K")  # a list per config object: editing one leaves the default alone
    assert GGUFConfig().quantizations == list(DEFAULT_QUANTIZATIONS)


# --- command-line flags generated from the config dataclasses (kto_pipeline/cli/flags.py) ---------------------


def _parsers():
    """kto's parser, and its `train` and `plan` subparsers."""
    import argparse

    from kto_pipeline.cli import build_parser

    kto = build_parser()
    (sub,) = (a for a in kto._actions if isinstance(a, argparse._SubParsersAction))
    return kto, sub.choices["train"], sub.choices["plan"]


def _sample(flag):
    """A value for every field unlike its default (the command line must carry it, not the default)."""
    if flag.kind is bool:
        return False if flag.default is None else not flag.default
    if flag.choices:
        return next(c for c in reversed(flag.choices) if c != flag.default)
    if flag.kind is list:
        return ["q_proj", "v_proj"]
    if flag.kind is str:
        return "smol" if flag.name == "model_name" else f"x-{flag.default}"
    return flag.kind(3) if flag.default in (None, 0, -1) else flag.default * 2


def test_every_config_field_has_a_flag_and_a_set_form():
    import dagster as dg

    from kto_pipeline.cli.flags import FLAGS, command_flags, overrides
    from kto_pipeline.cli.train import run_config
    from kto_pipeline.definitions import defs

    assert set(FLAGS) == {f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    samples: dict = {}
    for flag in FLAGS.values():
        samples.setdefault(flag.section, {})[flag.name] = _sample(flag)
    kto, _, _ = _parsers()
    by_alias = " ".join(command_flags(samples)).split()  # the seed's names where they exist
    by_generic = []
    by_set = []
    for flag in FLAGS.values():
        value = samples[flag.section][flag.name]
        generic = f"--{flag.section}-{flag.name.replace('_', '-')}"
        assert flag.options[-1] == generic
        if flag.kind is bool:
            by_generic.append(generic if value else f"--no-{generic[2:]}")
        else:
            by_generic += [generic, *(value if flag.kind is list else [str(value)])]
        text = ",".join(value) if flag.kind is list else str(value).lower() if flag.kind is bool else str(value)
        by_set += ["--set", f"{flag.dest}={text}"]
    for argv in (by_alias, by_generic, by_set):
        args = kto.parse_args(["train", *argv])
        assert overrides(args) == samples, argv
        assert overrides(kto.parse_args(["plan", *argv])) == samples, argv  # kto plan takes the same flags
    # every one of them reaches Dagster's run config, typed as its schema wants
    ops = run_config(kto.parse_args(["train", *by_alias]))["ops"]
    assert {k: v for k, v in ops["lora_adapter"]["config"].items() if k != "preset"} == samples
    checked = dg.validate_run_config(defs.resolve_implicit_global_asset_job_def(), {"ops": ops})
    assert checked["ops"]["lora_adapter"]["config"]["lora"]["target_modules"] == ["q_proj", "v_proj"]


def test_nothing_given_is_no_override_so_presets_apply():
    from kto_pipeline.cli.flags import overrides

    kto, _, _ = _parsers()
    assert overrides(kto.parse_args(["train"])) == {} and overrides(kto.parse_args(["plan"])) == {}
    # bool | None (None: decided by the run) is a --x/--no-x switch whose absence is None, not False
    args = kto.parse_args(["train"])
    assert getattr(args, "training.precompute_ref_log_probs") is None
    assert overrides(kto.parse_args(["train", "--no-training-precompute-ref-log-probs"])) == {
        "training": {"precompute_ref_log_probs": False}
    }
    given = overrides(kto.parse_args(["train", "--model-size", "7b", "--training-warmup-ratio", "0.2"]))
    config = get_config("7b", given)
    assert config.training.warmup_ratio == 0.2
    assert config.training.per_device_train_batch_size == PRESETS["7b"]["training"]["per_device_train_batch_size"]


def test_the_seed_flag_names_keep_their_meaning():
    """Every flag kto train and kto plan had before the generated ones, parsed to the same field and value."""
    from kto_pipeline.cli.flags import overrides

    kto, _, _ = _parsers()
    seed = {
        ("--model-name", "acme/m"): ("model", "model_name", "acme/m"),
        ("--max-seq-length", "512"): ("model", "max_seq_length", 512),
        ("--long-rows", "drop"): ("model", "long_rows", "drop"),
        ("--batch-size", "2"): ("training", "per_device_train_batch_size", 2),
        ("--gradient-accumulation", "16"): ("training", "gradient_accumulation_steps", 16),
        ("--learning-rate", "1e-7"): ("training", "learning_rate", 1e-7),
        ("--num-epochs", "2"): ("training", "num_train_epochs", 2.0),
        ("--max-steps", "10"): ("training", "max_steps", 10),
        ("--memory-budget-gib", "20"): ("training", "memory_budget_gib", 20.0),
        ("--num-processes", "2"): ("training", "num_processes", 2),
        ("--launcher", "ray"): ("training", "launcher", "ray"),
        ("--packing",): ("training", "packing", True),
        ("--fuse-reference",): ("training", "fuse_reference", True),
        ("--wandb",): ("training", "wandb", True),
        ("--wandb-project", "p"): ("training", "wandb_project", "p"),
        ("--wandb-run-name", "r"): ("training", "wandb_run_name", "r"),
        ("--lora-r", "8"): ("lora", "r", 8),
        ("--lora-target-modules", "q_proj", "v_proj"): ("lora", "target_modules", ["q_proj", "v_proj"]),
        ("--no-4bit",): ("model", "load_in_4bit", False),
    }
    for command in ("train", "plan"):
        for argv, (section, name, value) in seed.items():
            got = overrides(kto.parse_args([command, *argv]))
            assert got == {section: {name: value}} and type(got[section][name]) is type(value), (command, argv)
    train = kto.parse_args(["train"])
    assert (train.model_size, train.select, train.split_dataset, train.dry_run) == ("tiny", "*", None, False)
    plan = kto.parse_args(["plan"])
    assert (plan.model_size, plan.budget_gib, plan.backend) == ("7b", None, None)
    with pytest.raises(SystemExit):
        kto.parse_args(["train", "--long-rows", "keep"])  # choices from the Literal annotation


@pytest.mark.parametrize(
    "item, message",
    [
        ("training.warmup=0.2", "unknown field training.warmup; fields of training: per_device_train_batch_size, "),
        ("optim.lr=1", "unknown config section 'optim' in 'optim.lr=1'; sections: ['model', 'lora', 'training']"),
        ("lora.r=eight", "lora.r: expected an integer, not 'eight'"),
        ("training.learning_rate=fast", "training.learning_rate: expected a number, not 'fast'"),
        ("training.wandb=maybe", "training.wandb: expected true or false, not 'maybe'"),
        ("model.dtype=bf16", "model.dtype: expected one of ['auto', 'bfloat16', 'float16', 'float32'], not 'bf16'"),
        ("lora.target_modules=,", "lora.target_modules: expected comma-separated names"),
        ("warmup_ratio=0.2", "expected SECTION.FIELD=VALUE (e.g. training.warmup_ratio=0.2), not 'warmup_ratio=0.2'"),
        ("training.warmup_ratio", "expected SECTION.FIELD=VALUE"),
    ],
)
def test_set_names_what_is_wrong(item, message, capsys):
    kto, _, _ = _parsers()
    for command in ("train", "plan"):
        with pytest.raises(SystemExit) as e:
            kto.parse_args([command, "--set", item])
        assert e.value.code == 2
        assert f"argument --set: {message}" in capsys.readouterr().err


def test_set_parses_by_type_and_a_field_given_twice_is_an_error():
    from kto_pipeline.cli.flags import overrides

    kto, _, _ = _parsers()
    args = kto.parse_args(
        ["train", "--set", "training.wandb=yes", "--set", "lora.target_modules=q_proj, k_proj", "--set", "lora.r=4"]
    )
    assert overrides(args) == {"training": {"wandb": True}, "lora": {"target_modules": ["q_proj", "k_proj"], "r": 4}}
    same = kto.parse_args(["train", "--batch-size", "4", "--set", "training.per_device_train_batch_size=4"])
    assert overrides(same) == {"training": {"per_device_train_batch_size": 4}}
    both = kto.parse_args(["train", "--batch-size", "4", "--set", "training.per_device_train_batch_size=8"])
    with pytest.raises(ValueError, match=r"training.per_device_train_batch_size is given twice: 4 and 8"):
        overrides(both)


def _advice_flags() -> dict[str, str]:
    """flag -> the text naming it, for every `--flag` in the prose strings (not docstrings, not argv lists) of the
    modules that tell users what to run."""
    import ast
    import re
    from pathlib import Path

    import kto_pipeline

    root = Path(kto_pipeline.__file__).parent
    found: dict[str, str] = {}
    training, cli, defs = ("run", "memory"), ("plan", "failures", "report"), ("checks", "data")
    for name in [f"training/{m}.py" for m in training] + [f"cli/{m}.py" for m in cli] + [f"defs/{m}.py" for m in defs]:
        tree = ast.parse((root / name).read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if " " in node.value:  # prose; a lone "--standalone" is an argument of a command we run
                    for flag in re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", node.value):
                        found.setdefault(flag, f"{name}: {node.value.strip()[:80]}")
    return found


def test_every_flag_the_advice_names_exists():
    _, train, plan = _parsers()
    accepted = set(train._option_string_actions) | set(plan._option_string_actions)
    found = _advice_flags()
    # the scan sees the advice (the OOM and NaN advice, the planner's, kto plan's verdict)
    assert {"--lora-target-modules", "--lora-gradient-checkpointing", "--training-warmup-ratio", "--budget-gib"} <= set(
        found
    )
    assert {"--memory-budget-gib", "--batch-size", "--gradient-accumulation", "--max-seq-length"} <= set(found)
    missing = {flag: text for flag, text in found.items() if flag not in accepted}
    assert not missing, missing
    assert "--lora-target-modules" in train._option_string_actions  # the OOM advice's, now a kto train flag too


def test_kto_plan_suggests_the_planned_flags_to_kto_train(capsys):
    from kto_pipeline.cli import main

    argv = ["--model-size", "20b", "--lora-target-modules", "q_proj,k_proj", "v_proj", "--no-4bit", "--budget-gib"]
    assert main(["plan", *argv, "80"]) == 0
    train_command = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert train_command == (
        "Train: kto train --model-size 20b --no-4bit --lora-target-modules q_proj k_proj v_proj "
        "--batch-size 4 --gradient-accumulation 8"
    )
    kto, _, _ = _parsers()
    from kto_pipeline.cli.flags import overrides

    suggested = overrides(kto.parse_args(train_command.removeprefix("Train: kto ").split()))
    assert suggested["lora"] == {"target_modules": ["q_proj", "k_proj", "v_proj"]}
    # --memory-budget-gib is what plan fits when --budget-gib is not given
    assert main(["plan", "--model-size", "13b", "--memory-budget-gib", "16"]) == 0
    assert "Fits 16 GiB" in capsys.readouterr().out
