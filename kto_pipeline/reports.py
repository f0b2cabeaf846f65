"""What each asset writes for the next one to read: one frozen dataclass per report file, with a schema version.

Every report file of an artifact is written and read here only (`Report.write(path)` / `Report.read(path)`; a
folder means the report's usual file in it). A reader meeting another schema version, a file from before
versions, a missing field or an unknown one gets a ReportError naming the file, the field or both versions,
and what to do, never a KeyError. The file names and JSON keys are the ones other tools already read; a field
with a default of None is left out of the file while it is None.

Each schema version also enters its asset's version (`version_of(..., report=X.SCHEMA_VERSION)`), so a bump
builds a new folder instead of finding the old one complete and failing to read it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

SCHEMA = "schema_version"
R = TypeVar("R", bound="Report")


class ReportError(ValueError):
    """A report this kto_pipeline cannot read: the message names the file and the field or the versions."""


def doc(text: str, *, metadata: bool = False, default: Any = dataclasses.MISSING) -> Any:
    """A report field with its one-line documentation. metadata=True: the number is also shown as the asset's
    Dagster metadata (a float), so a new metric needs no second list."""
    return dataclasses.field(default=default, metadata={"doc": text, "metadata": metadata})


def _optional_none(f: dataclasses.Field) -> bool:
    return f.default is None


def _plain(obj: Any) -> Any:
    """A report as JSON values, leaving out the None-defaulted fields that are None."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: _plain(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not (_optional_none(f) and getattr(obj, f.name) is None)
        }
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class _Where:
    file: str
    advice: str  # what to do about it

    def fail(self, problem: str) -> ReportError:
        return ReportError(f"{self.file}: {problem}: {self.advice}")


def _decode(tp: Any, value: Any, name: str, where: _Where) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise where.fail(f"field {name!r} should be an object, not {type(value).__name__}")
        return _build(tp, value, name + ".", where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _decode(args[0], value, name, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise where.fail(f"field {name!r} should be a list, not {type(value).__name__}")
        return [_decode(item, v, f"{name}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise where.fail(f"field {name!r} should be an object, not {type(value).__name__}")
        return {k: _decode(item, v, f"{name}.{k}", where) for k, v in value.items()}
    return value


def _build(cls: type, data: dict[str, Any], prefix: str, where: _Where) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields) - ({SCHEMA} if not prefix else set()))
    if unknown:
        raise where.fail(f"unknown field(s) {', '.join(prefix + k for k in unknown)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _decode(hints[name], data[name], prefix + name, where)
        elif f.default is dataclasses.MISSING:
            raise where.fail(f"required field {prefix + name!r} ({f.metadata.get('doc', '')}) is missing")
    return cls(**values)


@dataclass(frozen=True)
class Report:
    """Base of every report file: FILE (its name in the artifact folder), ASSET (who writes it), SCHEMA_VERSION."""

    FILE: ClassVar[str] = ""
    ASSET: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = 1

    @classmethod
    def file_in(cls, path: str | Path) -> Path:
        path = Path(path)
        return path / cls.FILE if cls.FILE and path.is_dir() else path

    @classmethod
    def of(cls: type[R], data: dict[str, Any], source: str = "") -> R:
        """The report from plain values (a writer's dict; nested reports as dicts), checked like a read."""
        where = _Where(
            source or f"{cls.FILE or cls.__name__} being written",
            f"its writer and kto_pipeline.reports.{cls.__name__} disagree",
        )
        return _build(cls, data, "", where)

    @classmethod
    def read(cls: type[R], path: str | Path) -> R:
        file = cls.file_in(path)
        data = json.loads(file.read_text())  # a file that is not JSON fails as such (JSONDecodeError)
        where = _Where(str(file), f"materialize {cls.ASSET} again")
        if not isinstance(data, dict):
            raise where.fail(f"holds a JSON {type(data).__name__}, not an object")
        found = data.get(SCHEMA)
        if found != cls.SCHEMA_VERSION:
            seen = f"schema version {found}" if found is not None else "no schema version (an older kto_pipeline)"
            raise where.fail(f"{seen}, this kto_pipeline reads {cls.SCHEMA_VERSION}")
        return _build(cls, data, "", where)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values (what `read` gives back), without the schema version."""
        return _plain(self)

    def write(self, path: str | Path) -> Path:
        file = self.file_in(path)
        blob = {SCHEMA: self.SCHEMA_VERSION, **self.to_dict()}
        file.write_text(json.dumps(blob, indent=2, ensure_ascii=False, default=float) + "\n")
        return file


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SourceCounts:
    source: str = doc("the file (or Hub dataset) the rows came from")
    digest: str | None = doc("sha256 of its bytes", default=None)
    records_in: int = doc("records read from it", default=0)
    valid: int = doc("rows that passed validation", default=0)
    quarantined: int = doc("rows set aside, with their reasons", default=0)


@dataclass(frozen=True)
class FileReport(Report):
    """raw_file/<digest>/report.json: one validated input file."""

    FILE: ClassVar[str] = "report.json"
    ASSET: ClassVar[str] = "raw_file (or raw_preferences)"

    source: str = doc("the file (or Hub dataset) validated")
    validator: int = doc("validation code version (kto_pipeline.data.validate.VERSION)")
    records_in: int = doc("records read")
    valid: int = doc("rows that passed validation")
    quarantined: int = doc("rows set aside into quarantine.parquet")
    n_desirable: int = doc("valid rows labelled desirable")
    n_undesirable: int = doc("valid rows labelled undesirable")
    reasons: dict[str, int] = doc("quarantined rows per reason category")
    samples: list[dict[str, Any]] = doc("a few quarantined rows per reason: reason, source, line, raw")
    digest: str | None = doc("sha256 of the file's bytes (set once the file is in the cache)", default=None)
    size_bytes: int | None = doc("the file's size", default=None)
    file: str | None = doc("the file's name", default=None)


@dataclass(frozen=True)
class RawManifest(Report):
    """raw_preferences/<version>/manifest.json: the validated files of the union."""

    FILE: ClassVar[str] = "manifest.json"
    ASSET: ClassVar[str] = "raw_preferences"

    files: list[dict[str, Any]] = doc("per file: folder (its validated copy), source, digest, records_in, ...")


@dataclass(frozen=True)
class DatasetReport(Report):
    """kto_dataset/<version>/report.json: what the train/eval/quarantine split holds."""

    FILE: ClassVar[str] = "report.json"
    ASSET: ClassVar[str] = "kto_dataset"

    records_in: int = doc("records read from every source")
    valid: int = doc("rows kept (train + eval)")
    quarantined: int = doc("rows set aside with a reason (quarantine.parquet)")
    duplicates_dropped: int = doc("exact repeats of a kept row")
    train_rows: int = doc("rows in train.parquet")
    eval_rows: int = doc("rows in eval.parquet")
    n_desirable: int = doc("kept rows labelled desirable")
    n_undesirable: int = doc("kept rows labelled undesirable")
    train_desirable: int = doc("train rows labelled desirable")
    train_undesirable: int = doc("train rows labelled undesirable")
    eval_desirable: int = doc("eval rows labelled desirable")
    eval_undesirable: int = doc("eval rows labelled undesirable")
    reasons: dict[str, int] = doc("quarantined rows per reason category")
    samples: list[dict[str, Any]] = doc("a few quarantined rows per reason: reason, source, line, raw")
    data_version: str = doc("content hash of the split rows")
    eval_fraction: float = doc("share of prompts held out for eval")
    seed: int = doc("seed of the split")
    max_chars: int = doc("longer prompts or completions were quarantined")
    sources: list[SourceCounts] = doc("per input file: its counts")
    recommended_weights: dict[str, float] = doc(
        "desirable_share, desirable_weight, undesirable_weight from the train rows (data.label_balance)"
    )


# ------------------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class LengthBin:
    tokens: str = doc("token range, e.g. '33-64' or '>512'")
    rows: int = doc("rows whose prompt + completion fall in it")
    fits: bool = doc("whether the range is within max_seq_length")


@dataclass(frozen=True)
class SplitLengths:
    rows: int = doc("rows of the split before fitting")
    whole: int = doc("rows kept whole")
    prompt_cut: int = doc("rows kept with the start of their prompt cut")
    dropped: int = doc("rows left out (the completion alone does not fit, or long_rows=drop)")
    prompt_tokens_cut: int = doc("prompt tokens removed in all")
    turns_removed: int = doc("conversation turns removed in all")
    tokens_needed: dict[str, int] = doc("quantile ('0.5', '0.95', '1.0', ...) -> length keeping that share whole")
    histogram: list[LengthBin] = doc("rows per token-length bin")


@dataclass(frozen=True)
class LongRowsReport:
    """Rows longer than max_seq_length, per split (training.long_rows.account), inside metrics.json."""

    policy: str = doc("model.long_rows: cut_prompt or drop")
    max_seq_length: int = doc("model.max_seq_length the rows were fitted to")
    chat_template: bool = doc("rows were measured with the tokenizer's chat template")
    tokenizer: str = doc("the tokenizer that counted")
    trl_alone: str = doc("what TRL would have done with these rows on its own")
    splits: dict[str, SplitLengths] = doc("train and eval")
    dropped_rows_file: str | None = doc("parquet listing the dropped rows by id", default=None)


@dataclass(frozen=True)
class ChampionEval:
    adapter: str = doc("the released adapter's folder")
    eval_loss: float | None = doc("its eval loss on this run's eval rows", default=None)
    skipped: str | None = doc("why it was not evaluated (another base model)", default=None)


@dataclass(frozen=True)
class TrainingMetrics(Report):
    """lora_adapter/<version>/metrics.json: what training measured (training.run.train writes it)."""

    FILE: ClassVar[str] = "metrics.json"
    ASSET: ClassVar[str] = "lora_adapter"

    backend: str = doc("unsloth or transformers")
    base_model: str = doc("model the adapter was trained on (folder or Hub id)")
    resumed_from: str | None = doc("checkpoint this run started from")
    steps: int = doc("optimizer steps in all", metadata=True)
    steps_this_run: int = doc("steps this process trained (0: resumed at the last step)")
    train_loss: float | None = doc("mean training loss (Trainer)", metadata=True)
    final_loss: float | None = doc("loss of the last logged step", metadata=True)
    eval_loss: float | None = doc("KTO loss on the eval split", metadata=True)
    rewards_chosen: float | None = doc("last logged reward of desirable rows", metadata=True)
    rewards_rejected: float | None = doc("last logged reward of undesirable rows", metadata=True)
    rewards_margins: float | None = doc("last logged chosen - rejected reward", metadata=True)
    kl: float | None = doc("last logged KL estimate", metadata=True)
    kl_logged_steps: int = doc("logged steps after step 1 with a KL estimate", metadata=True)
    kl_zero_steps: int = doc("of those, steps whose estimate was 0")
    kl_zero_share: float | None = doc("kl_zero_steps / kl_logged_steps", metadata=True)
    eval: dict[str, float] = doc("every numeric figure Trainer.evaluate returned")
    champion: ChampionEval | None = doc("the released adapter on the same eval rows")
    tokens: int = doc("tokens this process trained on", metadata=True)
    micro_batch: int = doc("per-device batch training ran with")
    gradient_accumulation: int = doc("gradient accumulation steps training ran with")
    precomputed_reference: bool = doc("reference log-probs were computed once before training")
    peak_vram_gib: float | None = doc("peak reserved CUDA memory", metadata=True)
    tokens_per_s: float | None = doc("this process's training speed", metadata=True)
    train_runtime_s: float = doc("Trainer's train runtime", metadata=True)
    wall_s: float = doc("wall time of the whole training call", metadata=True)
    started_at: float = doc("unix time training started")
    finished_at: float = doc("unix time training finished")
    train_rows: int = doc("rows TRL trained on", metadata=True)
    eval_rows: int = doc("rows TRL evaluated on", metadata=True)
    desirable_weight: float = doc("KTO desirable_weight used", metadata=True)
    undesirable_weight: float = doc("KTO undesirable_weight used", metadata=True)
    chat_format: bool = doc("rows went through the chat template")
    processes: int = doc("data-parallel training processes", metadata=True)
    long_rows: LongRowsReport = doc("rows longer than max_seq_length, per split")
    kl_pairs_same_completion: float = doc("share of KL pairs given their own completion", metadata=True)
    history: list[dict[str, Any]] = doc("every logged step: step and its numbers")

    @classmethod
    def metadata_fields(cls) -> tuple[str, ...]:
        """The fields shown as numbers on the lora_adapter materialization."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("metadata"))


# -------------------------------------------------------------------------------------------- export


@dataclass(frozen=True)
class MergeInfo(Report):
    """merged_model/<version>/merge_info.json."""

    FILE: ClassVar[str] = "merge_info.json"
    ASSET: ClassVar[str] = "merged_model"

    base_model: str = doc("the base the adapter was trained on")
    merged_into: str = doc("what the adapter was merged into (the 16-bit original or the dequantized base)")
    dtype: str = doc("dtype of the merged weights")
    parameters: int = doc("parameters of the merged model")


@dataclass(frozen=True)
class GGUFFile(Report):
    """One GGUF file's figures: its `<file>.verified.json` sidecar (written only when it passed), and an entry of
    results.json."""

    ASSET: ClassVar[str] = "gguf_quantizations"
    SIDECAR: ClassVar[str] = ".verified.json"

    file: str = doc("file name, {name}-{TYPE}.gguf")
    path: str = doc("where it was written")
    type: str = doc("F16, BF16 or a llama.cpp quantization type")
    size_bytes: int = doc("file size")
    sha256: str = doc("sha256 of the file")
    parameters: int = doc("parameters in its tensors")
    tensor_bytes: int = doc("bytes of its tensors")
    bits_per_weight: float = doc("8 * tensor_bytes / parameters")
    tensor_types: dict[str, int] = doc("tensors per GGUF type")
    llama_cpp_version: str = doc("llama-cpp-python that built and verified it")
    build_seconds: float = doc("time to convert or quantize it")
    verification: dict[str, Any] = doc("llama.cpp against transformers: rel_error, top1_agreement, mean_kl, ...")
    thresholds: dict[str, float] = doc("the limits it was checked against")
    passed: bool = doc("within every limit")
    failures: list[str] = doc("each limit it missed")
    inputs: dict[str, Any] = doc("what it was verified for (model, base file, prompts, llama.cpp): reuse key")
    transformers_loadback: dict[str, Any] | None = doc("the file loaded back with transformers", default=None)
    modelfile: dict[str, Any] | None = doc("the Ollama Modelfile pointing at it (results.json only)", default=None)

    @classmethod
    def sidecar(cls, gguf: str | Path) -> Path:
        gguf = Path(gguf)
        return gguf.with_name(gguf.name + cls.SIDECAR)


@dataclass(frozen=True)
class GGUFResults(Report):
    """gguf_quantizations/<version>/results.json: every file export_gguf built, in build order."""

    FILE: ClassVar[str] = "results.json"
    ASSET: ClassVar[str] = "gguf_quantizations"

    files: list[GGUFFile] = doc("one entry per file, the base (F16/BF16) first")


# ------------------------------------------------------------------------------------------- release


@dataclass(frozen=True)
class ReleaseRecord(Report):
    """kto_release.json in every release: the model card's facts, machine-readable (sorted, no timestamps, so
    unchanged inputs give unchanged bytes). Sections other than repo_id/save_method are optional."""

    FILE: ClassVar[str] = "kto_release.json"
    ASSET: ClassVar[str] = "hub_release"

    repo_id: str = doc("the repo released to")
    save_method: str = doc("merged_16bit, lora or merged_4bit")
    weights: dict[str, Any] = doc("dtype and quantization of the released weights")
    gguf: list[dict[str, Any]] = doc("per released GGUF file: its card row (file, size, figures)")
    base_model: str | None = doc("the model it was trained from", default=None)
    title: str | None = doc("card title", default=None)
    license: str | None = doc("card license", default=None)
    dataset: dict[str, Any] | None = doc("kto_dataset's counts", default=None)
    label_balance: dict[str, Any] | None = doc("the label_balance gate's figures", default=None)
    training: dict[str, Any] | None = doc("the training settings", default=None)
    eval: dict[str, Any] | None = doc("the adapter's losses and rewards", default=None)
    lineage: Any = doc("asset -> version released (or a list of steps)", default=None)

    def write(self, path: str | Path) -> Path:
        file = self.file_in(path)
        blob = {SCHEMA: self.SCHEMA_VERSION, **self.to_dict()}
        file.write_text(json.dumps(blob, indent=2, sort_keys=True, default=str) + "\n")
        return file


# ---------------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class AnswerFigures:
    """Degeneration of one model's greedy answers (evaluation.metrics.degeneration)."""

    answers: int = doc("answers measured (one per evaluation prompt)")
    empty: float = doc("share of blank answers")
    hit_limit: float = doc("share that ran into max_new_tokens without ending by themselves")
    repeated_ngrams: float = doc("share of word n-grams repeating an earlier one of the same answer (pooled)")
    mean_tokens: float = doc("mean answer length in tokens")


@dataclass(frozen=True)
class AccuracyFigures:
    """Implicit-reward accuracy of a policy on the labelled rows, the base as pi_ref (evaluation.metrics)."""

    accuracy: float = doc("share of labelled rows whose reward is on the label's side of the reference point")
    low: float = doc("95% bootstrap interval of the accuracy (prompts resampled), low end")
    high: float = doc("95% bootstrap interval of the accuracy, high end")
    rows: int = doc("labelled rows scored")
    reference_point: str = doc("kl (KTO's z0 = beta * KL) or zero")
    kl: float = doc("the KL estimate of the reference point (0 with reference_point zero)")
    reward_margin: float = doc("mean reward of desirable rows minus undesirable ones (NaN with one label only)")
    logprob_margin: float = doc("mean per-token log-prob, desirable minus undesirable completions")


@dataclass(frozen=True)
class ModelFigures:
    role: str = doc("base, champion or candidate")
    source: str = doc("what was loaded: the adapter or model folder, or the base model")
    answers: AnswerFigures = doc("degeneration of its answers")
    accuracy: AccuracyFigures | None = doc("its reward accuracy (None for the base, or without labelled rows)")


@dataclass(frozen=True)
class Change:
    diff: float = doc("candidate minus champion reward accuracy")
    low: float = doc("95% paired bootstrap interval over prompts, low end")
    high: float = doc("95% paired bootstrap interval over prompts, high end")


@dataclass(frozen=True)
class GGUFAgreement:
    file: str = doc("the GGUF file answered with (llama.cpp)")
    type: str = doc("its quantization type, e.g. Q4_K_M")
    prompts: int = doc("prompts answered")
    exact_match: float = doc("share of prompts where its answer is the candidate's, exactly")
    token_agreement: float = doc("mean share of the answers' first gguf_agreement_tokens tokens that are equal")
    answers: AnswerFigures = doc("degeneration of its answers")


@dataclass(frozen=True)
class JudgeFigures:
    endpoint: str = doc("the judge's base_url (never its key)")
    model: str = doc("the judge model asked")
    prompts: int = doc("prompts judged, each in both orders")
    win_rate: float = doc("the candidate's mean score against the champion (or the base), ties half")
    low: float = doc("95% bootstrap interval of the win-rate, low end")
    high: float = doc("95% bootstrap interval of the win-rate, high end")
    ties: int = doc("prompts that ended in a tie")


@dataclass(frozen=True)
class LostPrompt:
    prompt: str = doc("the evaluation prompt")
    candidate: str = doc("the candidate's answer")
    champion: str = doc("the champion's answer (the base's without a champion)")
    score: float = doc("judge score (0 lost both orders) or candidate minus champion reward correctness on it")
    reason: str = doc("the judge's reasons, or the reward figures of its labelled rows")


@dataclass(frozen=True)
class EvalReport(Report):
    """model_eval/<version>/model_eval.json: the candidate, the champion and the base on the pinned evaluation set
    (evaluation.run.evaluate writes it; the behaviour check reads it)."""

    FILE: ClassVar[str] = "model_eval.json"
    ASSET: ClassVar[str] = "model_eval"

    base_model: str = doc("the training base, pi_ref of the rewards")
    candidate: str = doc("the candidate's adapter or model folder")
    champion: str | None = doc("the champion's (the current release), None for a first release")
    champion_skipped: str | None = doc("why a champion given was not compared (another base model)")
    eval_set: str = doc("the evaluation set file or folder")
    eval_set_version: str = doc("its content version (evalset.load_eval_set)")
    prompts: int = doc("evaluation prompts answered")
    labelled_rows: int = doc("labelled rows scored")
    settings: dict[str, Any] = doc("evaluation.run.EvalSettings used")
    models: dict[str, ModelFigures] = doc("per role: base, champion (if any), candidate")
    accuracy_change: Change | None = doc("candidate - champion accuracy; None without champion or labelled rows")
    gguf: GGUFAgreement | None = doc("the candidate's GGUF file against the candidate")
    judge: JudgeFigures | None = doc("the judge's pairwise win-rate of the candidate")
    lost: list[LostPrompt] = doc("up to 3 prompts where the candidate lost most against the champion (or base)")
    files: dict[str, str] = doc("name -> file in the folder: generations, labelled, verdicts (parquet)")
    seconds: dict[str, float] = doc("wall time per phase: load, generate, score, gguf, judge")
