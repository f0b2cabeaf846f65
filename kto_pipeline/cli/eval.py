"""`kto eval MODEL [--against MODEL]`: the model_eval report and the behaviour verdict for any two models.

    kto eval artifacts/lora_adapter/<v>                        # against the current release (or the base)
    kto eval release-1a2b3c4d5e6f --against release-0f9e8d7c6b5a --eval-set data/eval
    kto eval me/my-kto-model@latest --judge-url http://127.0.0.1:8080/v1 --judge-key-env NONE

MODEL is a LoRA adapter folder, a merged model folder, or a release of the local registry (a tag, a version id
or `latest`, optionally as REPO@REF). --against defaults to the registry's current release, else the base model
alone. The base (pi_ref of the rewards) comes from the adapter's adapter_config.json or the release's
kto_release.json. Exit 0: the behaviour gate passes; 1: it fails; 2: bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from kto_pipeline.evaluation.gate import BehaviourLimits

DEFAULT_REPO = "kto-pipeline/kto-model"


class EvalInputError(ValueError):
    """A model or evaluation set kto eval cannot use; the message says what to pass."""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model against another (or the base) on the evaluation set, with the behaviour verdict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="adapter folder, merged model folder, or registry release (TAG, VERSION, REPO@REF)")
    p.add_argument("--against", default=None, help="the model to compare with (default: the current release)")
    p.add_argument("--eval-set", default=None, help="evaluation set file or folder (default: the frozen set)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="most tokens of each greedy answer")
    p.add_argument("--batch-size", type=int, default=16, help="prompts generated together")
    p.add_argument("--rows", type=int, default=4, help="prompts shown side by side")
    p.add_argument("--base-model", default=None, help="the base model, where the model's files do not name it")
    p.add_argument("--repo", default=None, help=f"registry repo of releases (default: the only one, or {DEFAULT_REPO})")
    p.add_argument("--root", default=None, help="artifact root (default: $KTO_ARTIFACT_ROOT or ./artifacts)")
    p.add_argument("--output-dir", default=None, help="where the report goes (default: ROOT/kto_eval/<time>)")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible judge endpoint, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--judge-model", default="judge", help="model name sent to the judge")
    p.add_argument(
        "--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the judge's key; NONE: no key"
    )
    p.add_argument(
        "--judge-format", default="json_schema", choices=["json_schema", "json_object", "text"], help="verdict format"
    )
    limits = BehaviourLimits()
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=limits.max_accuracy_drop,
        help="quality_gates.max_accuracy_drop of the behaviour verdict",
    )
    p.add_argument(
        "--max-degeneration-increase",
        type=float,
        default=limits.max_degeneration_increase,
        help="quality_gates.max_degeneration_increase of the behaviour verdict",
    )
    p.set_defaults(func=run)


def _repo(root: Path, repo: str | None) -> str:
    if repo:
        return repo
    found = sorted(str(p.parent.relative_to(root / "registry")) for p in (root / "registry").glob("**/index.json"))
    return found[0] if len(found) == 1 else DEFAULT_REPO


def _release(root: Path, ref: str, repo: str | None) -> Path:
    from kto_pipeline.release import LocalRegistry, ReleaseError

    repo, ref = ref.rsplit("@", 1) if "@" in ref else (_repo(root, repo), ref)
    try:
        return LocalRegistry(root).checkout(repo, ref)
    except ReleaseError as e:
        raise EvalInputError(f"{ref} is no folder and no release: {e}") from None


def resolve_model(ref: str, root: Path, repo: str | None) -> Path:
    """An adapter or model folder from a path or a registry release."""
    path = Path(ref)
    if not path.exists():
        path = _release(root, ref, repo)
    if not ((path / "adapter_config.json").is_file() or (path / "config.json").is_file()):
        raise EvalInputError(f"{path} holds neither adapter_config.json nor config.json: not a model to evaluate")
    return path


def base_of(path: Path) -> str | None:
    """The base model a folder was trained from: PEFT's config, the release record or the merge record."""
    from kto_pipeline.reports import MergeInfo, ReleaseRecord

    if (path / "adapter_config.json").is_file():
        return json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if (path / ReleaseRecord.FILE).is_file():
        return ReleaseRecord.read(path).base_model
    if (path / MergeInfo.FILE).is_file():
        return MergeInfo.read(path).base_model
    return None


def _local_base(base: str, root: Path) -> str:
    """A local preset (tiny, smol, or their folder under some artifact cache) from this root's cache."""
    from kto_pipeline.training.model import local_model_name, resolve_model_path

    name = local_model_name(base)
    return base if Path(base).exists() or not name else resolve_model_path(name, root / "cache")


def _current_release(root: Path, repo: str | None) -> Path | None:
    from kto_pipeline.release import LocalRegistry

    repo = _repo(root, repo)
    return LocalRegistry(root).checkout(repo) if LocalRegistry(root).index(repo)["head"] else None


def _eval_set(arg: str | None, root: Path) -> str:
    if arg:
        return arg
    frozen = root / "eval_set" / "frozen.jsonl"
    if frozen.is_file():
        return str(frozen)
    raise EvalInputError(
        f"no evaluation set: none was frozen under {root / 'eval_set'} yet; pass --eval-set PATH "
        "(a file or folder of prompts, optionally with labelled completions, in any training-data format)"
    )


def build_job(args):
    from kto_pipeline.evaluation.run import EvalJob, EvalSettings, ModelSpec

    root = Path(args.root or os.environ.get("KTO_ARTIFACT_ROOT") or "artifacts")
    candidate = resolve_model(args.model, root, args.repo)
    against = resolve_model(args.against, root, args.repo) if args.against else _current_release(root, args.repo)
    if against is not None and against.resolve() == candidate.resolve():
        against = None  # the candidate is the current release: compare it with the base
    base = args.base_model or base_of(candidate)
    if not base:
        raise EvalInputError(f"{candidate} does not name its base model: pass --base-model")
    gguf = sorted(candidate.glob("*Q4_K_M.gguf"))  # a release's quantized file answers too
    judge = None
    if args.judge_url:
        key = None if args.judge_key_env.upper() == "NONE" else args.judge_key_env
        judge = {"base_url": args.judge_url, "model": args.judge_model, "api_key_env": key}
        judge["response_format"] = args.judge_format
    out = args.output_dir or root / "kto_eval" / time.strftime("%Y%m%d-%H%M%S")
    return EvalJob(
        base_model=_local_base(base, root),
        candidate=ModelSpec("candidate", str(candidate)),
        champion=ModelSpec("champion", str(against)) if against else None,
        eval_set=_eval_set(args.eval_set, root),
        output_dir=str(out),
        settings=EvalSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, table_rows=args.rows),
        gguf=str(gguf[0]) if gguf else None,
        judge=judge,
    )


def report_text(report) -> str:
    """The per-model table: accuracy with its interval, degeneration, mean length."""
    lines = [
        f"{'model':<10} {'reward accuracy [95%]':<24} {'empty':>6} {'cut':>6} {'repeats':>8} {'tokens':>7}  source"
    ]
    rows = [(role, m.answers, m.accuracy, m.source) for role, m in report.models.items()]
    if report.gguf is not None:
        rows.append((report.gguf.type, report.gguf.answers, None, report.gguf.file))
    for role, a, acc, source in rows:
        accuracy = f"{acc.accuracy:.3f} [{acc.low:.3f}, {acc.high:.3f}]" if acc else "-"
        lines.append(
            f"{role:<10} {accuracy:<24} {a.empty:>6.0%} {a.hit_limit:>6.0%} {a.repeated_ngrams:>8.0%} "
            f"{a.mean_tokens:>7.1f}  {source}"
        )
    if report.champion_skipped:
        lines.append(f"champion not compared: {report.champion_skipped}")
    return "\n".join(lines)


def run(args) -> int:
    from kto_pipeline.data.readers import DataFileError
    from kto_pipeline.evaluation.gate import behaviour_verdict
    from kto_pipeline.evaluation.judge import JudgeError
    from kto_pipeline.evaluation.run import evaluate, side_by_side

    try:
        job = build_job(args)
        print(f"kto eval: {job.candidate.path} against {job.champion.path if job.champion else 'the base'}", flush=True)
        report = evaluate(job, log=lambda line: print(f"  {line}", flush=True))
    except (EvalInputError, DataFileError, JudgeError, ValueError) as e:
        print(f"kto eval: {e}", file=sys.stderr)
        return 2
    print(f"\n{report.prompts} prompts, {report.labelled_rows} labelled rows of {report.eval_set}")
    print(report_text(report))
    print(f"\n{side_by_side(job.output_dir, job.settings.table_rows)}\n")
    limits = BehaviourLimits(
        max_accuracy_drop=args.max_accuracy_drop, max_degeneration_increase=args.max_degeneration_increase
    )
    verdict = behaviour_verdict(report, limits)
    print(verdict.description)
    print(f"\nreport: {Path(job.output_dir) / report.FILE}")
    return 0 if verdict.passed else 1
