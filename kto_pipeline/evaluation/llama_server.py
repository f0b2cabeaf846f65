"""llama-cpp-python's OpenAI-compatible server, safe on AVX-512/AMX CPUs.

`python -m kto_pipeline.evaluation.llama_server --model FILE.gguf --port 8000` takes `python -m llama_cpp.server`'s
arguments.

The server builds its models with `Llama(...)`, which has no argument for `use_extra_bufts`; on CPUs with AVX-512 +
AMX its quantized decode dies on the first request (SIGILL/SIGSEGV, see export/llama.py). The same rule as every
other llama.cpp use here: the default model parameters carry use_extra_bufts=False (KTO_LLAMA_EXTRA_BUFTS=1 opts in).
"""

from __future__ import annotations

from kto_pipeline.export.llama import extra_bufts_enabled
from kto_pipeline.patches import llama_model_params


def main() -> None:
    import llama_cpp.server.__main__ as server

    with llama_model_params(use_extra_bufts=extra_bufts_enabled()):
        server.main()


if __name__ == "__main__":
    main()
