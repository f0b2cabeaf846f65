"""`kto upload PATH REPO`: release a model folder, like the seed's upload_to_hf.py.

    kto upload artifacts/merged_model/<v> me/my-kto-model                      # local registry
    HF_TOKEN=hf_... kto upload artifacts/merged_model/<v> me/my-kto-model --target hub \\
        --create-gguf --gguf-quantizations Q4_K_M Q5_K_M Q8_0

PATH is a merged model folder or a LoRA adapter folder (merged on the fly for merged_* save methods).
The token is read from HF_TOKEN; --token exists for the seed's habit but leaks into shell history.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kto_pipeline.cli.figures import gguf_file_line
from kto_pipeline.reports import MergeInfo


def add_parser(sub) -> None:
    from kto_pipeline.export.gguf import DEFAULT_QUANTIZATIONS

    p = sub.add_parser(
        "upload",
        help="release a model (local registry by default, or the Hugging Face Hub)",
        description=__doc__,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("path", help="merged model folder, or LoRA adapter folder")
    p.add_argument("repo", help="repo id, e.g. username/model-name")
    p.add_argument(
        "--save-method",
        default="merged_16bit",
        choices=["merged_16bit", "lora", "merged_4bit"],
        help="merged_16bit: merged 16-bit safetensors (default); lora: the adapter only; "
        "merged_4bit: bitsandbytes NF4 (needs CUDA)",
    )
    p.add_argument("--create-gguf", action="store_true", help="also export, verify and release GGUF files")
    p.add_argument(
        "--gguf-quantizations",
        nargs="+",
        default=list(DEFAULT_QUANTIZATIONS),
        metavar="TYPE",
        help="GGUF types to release (default: %(default)s); F16/BF16 adds the unquantized file",
    )
    p.add_argument(
        "--target",
        choices=["local", "hub"],
        default="local",
        help="local: content-addressed registry under --root (default); hub: Hugging Face Hub",
    )
    p.add_argument(
        "--root",
        default=None,
        help="local registry root (default: $KTO_ARTIFACT_ROOT or ./artifacts); files go to ROOT/registry/",
    )
    vis = p.add_mutually_exclusive_group()
    vis.add_argument(
        "--private", dest="private", action="store_true", default=True, help="create the Hub repo private (default)"
    )
    vis.add_argument("--public", dest="private", action="store_false", help="create the Hub repo public")
    p.add_argument("--endpoint", default=None, help="Hub endpoint URL (default: $HF_ENDPOINT or huggingface.co)")
    p.add_argument("--tag", default=None, help="version tag (default: release-<content hash>)")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--base-model", default=None, help="base model id for the card (default: read from PATH)")
    p.add_argument(
        "--quantized-base",
        choices=["original", "dequantize"],
        default="original",
        help="PATH is an adapter trained on a 4-bit checkpoint: merge into its 16-bit original "
        "(default) or into the dequantized 4-bit weights (offline)",
    )
    p.add_argument(
        "--base-16bit",
        default=None,
        metavar="MODEL",
        help="that 16-bit original (Hub id or folder), where the 4-bit checkpoint's name does not tell",
    )
    p.add_argument(
        "--card-info",
        default=None,
        metavar="JSON",
        help="JSON file with extra model card facts (dataset, training, eval, lineage)",
    )
    p.add_argument("--token", default=None, help="DISCOURAGED: leaks into shell history; set HF_TOKEN instead")
    p.add_argument("--verbose", "-v", action="store_true", help="show the stack trace of an unexpected error")
    p.set_defaults(func=run)


def _card_info(path: Path, args) -> dict:
    info: dict = {}
    if args.card_info:
        try:
            info = json.loads(Path(args.card_info).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            from kto_pipeline.release import ReleaseError

            raise ReleaseError(f"cannot read --card-info {args.card_info}: {exc}") from None
    base = args.base_model
    if not base and (path / MergeInfo.FILE).is_file():  # a merged_model folder
        base = MergeInfo.read(path).base_model
    if not base and (path / "adapter_config.json").is_file():  # PEFT's own file, in an adapter folder
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if base:
        info.setdefault("base_model", base)
    return info


def _gguf(path: Path, types: list[str], work: Path) -> tuple[list[Path], list[dict]]:
    """GGUF files of the full-weights folder `path`, verified; the rows of their figures."""
    from kto_pipeline.release import ReleaseError

    try:
        from kto_pipeline.export.gguf import BASE_TYPES, GGUFExportError, export_gguf
    except ImportError as exc:
        raise ReleaseError(
            f"--create-gguf needs kto_pipeline.export.gguf.export_gguf, which is missing ({exc})"
        ) from None
    types = [t.upper() for t in types]
    bases = [t for t in types if t in BASE_TYPES]
    base = bases[0] if bases else "F16"
    try:
        results = export_gguf(
            path,
            work / "gguf",
            [t for t in types if t not in BASE_TYPES],
            base=base,
            log=lambda m: print(f"gguf: {m}", flush=True),
        )
    except (GGUFExportError, ValueError) as exc:
        raise ReleaseError(f"GGUF export failed: {exc}") from None
    keep = [r for r in results if r["type"] in types]
    return [Path(r["path"]) for r in keep], keep


@contextlib.contextmanager
def _show_progress() -> Iterator[None]:
    """Release progress (and retry warnings) on stderr while the command runs; the libraries' own loggers stay as
    they are, and so does the release logger afterwards (the command also runs in-process, from Python)."""
    import logging

    log = logging.getLogger("kto_pipeline.release")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def run(args) -> int:
    with _show_progress():
        try:
            return _run(args)
        except Exception as exc:  # noqa: BLE001 - an unexpected error, in plain words; the trace with --verbose
            if args.verbose:
                raise
            first = (str(exc).strip() or "(no message)").splitlines()
            print(f"kto upload failed, nothing was released: {type(exc).__name__}: {first[0]}", file=sys.stderr)
            for line in first[1:20]:
                print(f"  {line}", file=sys.stderr)
            print("  (--verbose shows the stack trace)", file=sys.stderr)
            return 1


def _run(args) -> int:
    from kto_pipeline.release import ReleaseError, make_target, release_model
    from kto_pipeline.release.save import is_adapter_dir, merge_adapter_dir

    if args.token:
        print(
            "kto upload: warning: --token puts the token in your shell history and the process list; "
            "export HF_TOKEN instead",
            file=sys.stderr,
        )
        os.environ["HF_TOKEN"] = args.token
    path = Path(args.path)
    if not path.is_dir():
        print(f"kto upload: {path} is not a folder", file=sys.stderr)
        return 2
    root = args.root or os.environ.get("KTO_ARTIFACT_ROOT", "artifacts")
    try:
        target = make_target(args.target, root=root, endpoint=args.endpoint, private=args.private)
        info = _card_info(path, args)
        with tempfile.TemporaryDirectory(prefix="kto-upload-") as tmp:
            full = path  # full weights: PATH, or its adapter merged once for the weights and the GGUF files
            if is_adapter_dir(path) and (args.save_method != "lora" or args.create_gguf):
                full = merge_adapter_dir(path, None, Path(tmp) / "merged", args.quantized_base, args.base_16bit)
            files: list[Path] = []
            if args.create_gguf:
                files, rows = _gguf(full, args.gguf_quantizations, Path(tmp))
                info["gguf"] = rows
            result = release_model(
                path if args.save_method == "lora" else full,
                args.repo,
                target=target,
                save_method=args.save_method,
                gguf_files=files,
                card_info=info,
                tag=args.tag,
                message=args.message,
                base_model=info.get("base_model"),
            )
    except ReleaseError as exc:
        print(f"kto upload: {exc}", file=sys.stderr)
        print("Nothing was released.", file=sys.stderr)
        return 1
    state = "new version" if result.created else "unchanged (already released; nothing uploaded)"
    print(f"{result.target}: {result.repo_id} {result.tag} -> {result.revision} [{state}]")
    print(f"  {result.files} files, {result.size_bytes:,} bytes at {result.location}")
    for row in info.get("gguf", []):
        print(gguf_file_line(row["file"], row["size_bytes"], row["bits_per_weight"], row["verification"]))
    if result.target == "local" and args.save_method != "lora":
        print("Next:")
        print(f"  kto chat {result.location}    # talk to the released model")
        for row in info.get("gguf", [])[:1]:
            print(f"  kto chat {Path(result.location) / row['file']}    # the same, in llama.cpp")
    return 0
