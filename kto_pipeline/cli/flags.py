"""Command-line flags for every config field, generated from the dataclasses in kto_pipeline.config.

Each field of ModelConfig, LoraConfig and TrainingConfig is `--<section>-<field>` (`--lora-target-modules`,
`--training-warmup-ratio`) with the field's own help text; the seed's names (`--batch-size`, `--learning-rate`,
...) are aliases of theirs; and `--set section.field=value` reaches any field. Every flag defaults to None: only
what the command line gives becomes an override, so the preset's values stay otherwise. `kto train` and
`kto plan` take the same flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import types
import typing
from typing import Any

from kto_pipeline.config import PRESETS, SECTIONS

# (section, field) -> its other names: the seed's train_kto.py flags and the short ones kto train and kto plan had
ALIASES: dict[tuple[str, str], tuple[str, ...]] = {
    ("model", "model_name"): ("--model-name",),
    ("model", "max_seq_length"): ("--max-seq-length",),
    ("model", "long_rows"): ("--long-rows",),
    ("model", "load_in_4bit"): ("--4bit",),  # and so --no-4bit
    ("training", "per_device_train_batch_size"): ("--batch-size",),
    ("training", "gradient_accumulation_steps"): ("--gradient-accumulation",),
    ("training", "learning_rate"): ("--learning-rate",),
    ("training", "num_train_epochs"): ("--num-epochs",),
    ("training", "max_steps"): ("--max-steps",),
    ("training", "memory_budget_gib"): ("--memory-budget-gib",),
    ("training", "num_processes"): ("--num-processes",),
    ("training", "launcher"): ("--launcher",),
    ("training", "packing"): ("--packing",),
    ("training", "fuse_reference"): ("--fuse-reference",),
    ("training", "wandb"): ("--wandb",),
    ("training", "wandb_project"): ("--wandb-project",),
    ("training", "wandb_run_name"): ("--wandb-run-name",),
}
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
METAVAR = {int: "N", float: "X", str: "TEXT", list: "NAME"}


@dataclasses.dataclass(frozen=True)
class Flag:
    """One config field as the command line sees it: its kind (bool, int, float, str or list of names)."""

    section: str
    name: str
    kind: type
    choices: tuple[str, ...] | None
    default: Any
    help: str

    @property
    def dest(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def options(self) -> tuple[str, ...]:
        """Its option strings, the seed's name (where it has one) first: the one the help and advice show."""
        return (*ALIASES.get((self.section, self.name), ()), f"--{self.section}-{self.name.replace('_', '-')}")

    def parse(self, text: str) -> Any:
        """The value of `--set section.field=TEXT`, by the field's type; ValueError says what was expected."""
        if self.kind is bool:
            if text.strip().lower() in TRUE + FALSE:
                return text.strip().lower() in TRUE
            raise ValueError(f"expected true or false, not {text!r}")
        if self.kind is list:
            if names := split_names([text]):
                return names
            raise ValueError("expected comma-separated names, e.g. q_proj,v_proj")
        if self.choices and text not in self.choices:
            raise ValueError(f"expected one of {list(self.choices)}, not {text!r}")
        try:
            return self.kind(text)
        except ValueError:
            raise ValueError(f"expected {'an integer' if self.kind is int else 'a number'}, not {text!r}") from None

    def text(self, value: Any) -> str:
        """`value` as this flag on a command line (for the commands kto plan suggests)."""
        option = self.options[0]
        if self.kind is bool:
            return option if value else f"--no-{option[2:]}"
        if self.kind is list:
            return f"{option} {' '.join(map(shlex.quote, value))}"
        if self.kind is float and float(value).is_integer():
            return f"{option} {int(value)}"
        return f"{option} {shlex.quote(str(value))}"


def _flag(section: str, field: dataclasses.Field, hint: Any) -> Flag:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: None is the field's "unset"
        (hint,) = (a for a in typing.get_args(hint) if a is not type(None))
    choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
    kind = str if choices else list if typing.get_origin(hint) is list else hint
    if kind not in (bool, int, float, str, list):
        raise TypeError(f"{section}.{field.name}: no command-line form for {hint!r}; add one in cli/flags.py")
    default = field.default_factory() if field.default is dataclasses.MISSING else field.default
    return Flag(section, field.name, kind, choices, default, field.metadata.get("help", ""))


FLAGS: dict[str, Flag] = {
    f.dest: f
    for section, cls in SECTIONS.items()
    for f in (_flag(section, field, typing.get_type_hints(cls)[field.name]) for field in dataclasses.fields(cls))
}


def split_names(values: list[str]) -> list[str]:
    """`--lora-target-modules q_proj k_proj` and `q_proj,k_proj` alike."""
    return [name for value in values for name in (n.strip() for n in value.split(",")) if name]


def _help(flag: Flag) -> str:
    text = flag.help.replace("%", "%%")  # argparse formats help with %
    if flag.default is None:  # the help says what unset means
        return text
    default = " ".join(flag.default) if flag.kind is list else flag.default
    preset = any(flag.name in p.get(flag.section, {}) for p in PRESETS.values())
    return f"{text} (default: {default}{'; presets set their own' if preset else ''})"


def _set_item(text: str) -> tuple[str, str, Any]:
    """argparse type of --set: 'section.field=value' -> (section, field, typed value), or a message naming what is
    wrong and what would be right."""
    key, eq, value = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not (eq and dot):
        raise argparse.ArgumentTypeError(f"expected SECTION.FIELD=VALUE (e.g. training.warmup_ratio=0.2), not {text!r}")
    if section not in SECTIONS:
        raise argparse.ArgumentTypeError(f"unknown config section {section!r} in {text!r}; sections: {list(SECTIONS)}")
    flag = FLAGS.get(f"{section}.{name}")
    if flag is None:
        fields = [f.name for f in FLAGS.values() if f.section == section]
        raise argparse.ArgumentTypeError(f"unknown field {section}.{name}; fields of {section}: {', '.join(fields)}")
    try:
        return section, name, flag.parse(value.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{section}.{name}: {e}") from None


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One argument group per config section, then --set."""
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} ({cls.__name__})")
        for flag in (f for f in FLAGS.values() if f.section == section):
            kw: dict[str, Any] = {"dest": flag.dest, "default": None, "help": _help(flag)}
            if flag.kind is bool:
                kw["action"] = argparse.BooleanOptionalAction
            elif flag.kind is list:
                kw.update(nargs="+", metavar=METAVAR[list])
            elif flag.choices:
                kw["choices"] = list(flag.choices)
            else:
                kw.update(type=flag.kind, metavar=METAVAR[flag.kind])
            group.add_argument(*flag.options, **kw)
    parser.add_argument_group("any config field").add_argument(
        "--set",
        dest="set_fields",
        action="append",
        default=[],
        type=_set_item,
        metavar="SECTION.FIELD=VALUE",
        help="set any field of the sections above, e.g. --set training.warmup_ratio=0.2 or --set "
        "lora.target_modules=q_proj,v_proj (repeatable; the value is read by the field's type)",
    )


def overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """{section: {field: value}} of the fields the command line gave, by flag or --set; the same field given twice
    with different values is a ValueError (which one was meant?)."""
    out: dict[str, dict[str, Any]] = {}
    flags = [(f.section, f.name, getattr(args, f.dest, None)) for f in FLAGS.values()]
    given = [(section, name, value) for section, name, value in flags if value is not None]
    for section, name, value in given + list(getattr(args, "set_fields", [])):
        if FLAGS[f"{section}.{name}"].kind is list:
            value = split_names(value)
        values = out.setdefault(section, {})
        if name in values and values[name] != value:
            raise ValueError(f"{section}.{name} is given twice: {values[name]!r} and {value!r}")
        values[name] = value
    return out


def command_flags(overrides: dict[str, dict[str, Any]]) -> list[str]:
    """The flags that give these overrides, in field order (the inverse of `overrides`)."""
    return [f.text(overrides[f.section][f.name]) for f in FLAGS.values() if f.name in overrides.get(f.section, {})]
