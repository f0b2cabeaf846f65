#!/usr/bin/env python
"""Does llama.cpp decode each GGUF file on this CPU, with its extra buffer types (weight repacking, AMX) on and
off? Each load runs in an isolated child (kto_pipeline.export.llama.isolated), so a crash is a row, not the end.

    python benchmarks/llama_cpu_check.py FILE.gguf [FILE.gguf ...] [--tokens 64]

Prints llama.cpp's system info and a markdown table: file, setting, outcome (ok / the signal), prompt and
generation tokens/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kto_pipeline.export.llama import EXTRA_BUFTS_ENV, NativeCrash, isolated, system_info  # noqa: E402

PROMPT = "The capital of France is Paris. The capital of Germany is Berlin. Water boils at one hundred degrees. " * 4


def decode(path: str, tokens: int) -> dict[str, float]:
    """Runs in the child: prompt tokens/s and greedy generation tokens/s."""
    from kto_pipeline.export import llama

    llm = llama.load(path, n_ctx=512, verbose=False)
    ids = llm.tokenize(PROMPT.encode(), add_bos=True)
    t0 = time.perf_counter()
    llm.eval(ids)
    prompt_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = 0
    for _ in llm.generate(ids, temp=0.0, reset=True):
        n += 1
        if n >= tokens:
            break
    gen_s = time.perf_counter() - t0
    return {"prompt_tok_s": len(ids) / prompt_s, "gen_tok_s": n / gen_s}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--tokens", type=int, default=64)
    args = p.parse_args()
    print(f"llama.cpp system info: {system_info()}\n")
    print("| file | extra buffer types | outcome | prompt tok/s | generation tok/s |\n|---|---|---|---|---|")
    for f in args.files:
        for on in (False, True):
            os.environ[EXTRA_BUFTS_ENV] = "1" if on else "0"
            try:
                r = isolated(
                    "benchmarks.llama_cpu_check:decode", f, args.tokens, what=f"decoding {Path(f).name}", timeout=600
                )
                row = ("ok", f"{r['prompt_tok_s']:.0f}", f"{r['gen_tok_s']:.1f}")
            except NativeCrash as e:
                row = (str(e).split("killed by ")[-1].split(".")[0] if "killed by" in str(e) else "failed", "–", "–")
            print(f"| {Path(f).name} | {'on' if on else 'off'} | {row[0]} | {row[1]} | {row[2]} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
