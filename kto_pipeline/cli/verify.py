"""`kto verify REPO`: download every file of a Hub release and check it against the Hub's own record.

    HF_TOKEN=hf_... kto verify me/my-kto-model --revision release-1a2b3c4d5e6f

Each file's bytes are hashed (sha256 for LFS files, the git blob id otherwise) and compared with what the Hub
lists for it; a file whose stored bytes changed is named. Exit 0: intact; 1: a file differs; 2: cannot check.
`hub_release` runs the same check after every upload, before it tags the release.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="check that a Hub release serves the bytes it records (sha256 per file)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("repo", help="repo id, e.g. username/model-name")
    p.add_argument("--revision", default="main", help="branch, tag or commit (default: main)")
    p.add_argument("--endpoint", default=None, help="Hub endpoint URL (default: $HF_ENDPOINT or huggingface.co)")
    p.set_defaults(func=run)


def run(args) -> int:
    from huggingface_hub import HfApi

    from kto_pipeline.release import ReleaseError
    from kto_pipeline.release.hub import read_token, verify_remote

    token = ""
    try:
        token = read_token()
        api = HfApi(endpoint=args.endpoint, token=token, library_name="kto_pipeline")
        problems = verify_remote(api, args.repo, args.revision)
    except ReleaseError as exc:
        print(f"kto verify: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a network or Hub error, in one line, token scrubbed
        text = f"{type(exc).__name__}: {exc}".replace(token or "\0", "***").splitlines()[0]
        print(f"kto verify: cannot check {args.repo}@{args.revision}: {text}", file=sys.stderr)
        return 2
    if problems:
        print(f"kto verify: {args.repo}@{args.revision} is CORRUPT; do not download it:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"{args.repo}@{args.revision}: every file matches its sha256 on the Hub")
    return 0
