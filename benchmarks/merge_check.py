#!/usr/bin/env python
"""merged_model on a real preset's shape, on one GPU: train on a pre-quantized 4-bit checkpoint, then merge.

The 7b preset's architecture (Mistral-7B v0.3) with random weights (no hub on the GPU host): bf16 weights, and
the same weights quantized to bitsandbytes NF4 and saved, as unsloth/mistral-7b-v0.3-bnb-4bit is. kto_pipeline
trains a LoRA adapter on the 4-bit checkpoint (Unsloth, the 7b preset's LoRA), then `merge_adapter` merges it
both ways (`original`: into the bf16 weights; `dequantize`: into the dequantized 4-bit weights, on the GPU and,
as for a card too small to hold the 16-bit model, on the CPU). Logits of each merged model are compared with the
unmerged model they stand for (base + adapter through PEFT), next to bf16's own rounding of that model.

    python benchmarks/merge_check.py --root /dev/shm/merge --out merge.json

CPU smoke test of the plumbing: `--arch smoke --backend transformers`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import train_bench as tb  # noqa: E402  (its model builder and memory helpers)

TRAIN = """import json, sys
from pathlib import Path
from kto_pipeline.config import Config
from kto_pipeline.training.run import train
m = train(Config.from_dict(json.loads(sys.argv[1])), *map(Path, sys.argv[2:5]), log=lambda s: None)
print(json.dumps({k: m[k] for k in ("backend", "steps", "final_loss", "eval_loss", "peak_vram_gib", "wall_s")}))
"""


def quantize(src: Path, dst: Path) -> float:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    t = time.time()
    q = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=q, device_map={"": device})
    model.save_pretrained(dst)
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copyfile(f, dst / f.name)
    del model
    tb.fresh_memory()
    return time.time() - t


def logits_of(model_dir: Path, adapter: Path | None, ids, dtype: str = "auto") -> torch.Tensor:  # noqa: F821 - torch is imported inside
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map={"": device})
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    with torch.no_grad():
        out = model(ids.to(device)).logits.float().cpu()
    del model
    tb.fresh_memory()
    return out


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--root", default="/dev/shm/merge")
    p.add_argument("--out", default="merge.json")
    p.add_argument("--arch", default="mistral-7b")
    p.add_argument("--backend", default="auto", help="auto (Unsloth on CUDA) or transformers")
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()

    import torch

    from kto_pipeline.config import get_config
    from kto_pipeline.data.dataset import build_kto_dataset
    from kto_pipeline.export.merge import MergeError, merge_adapter, plan_merge

    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    base16, base4 = root / "base-bf16", root / "base-bnb-4bit"
    result: dict = {"arch": args.arch, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    t = time.time()
    tb.build(base16, args.arch)
    result["build_s"] = round(time.time() - t, 1)
    result["quantize_s"] = round(quantize(base16, base4), 1)
    build_kto_dataset(sorted((REPO / "data" / "raw").glob("*.jsonl")), root / "data", eval_fraction=0.2)

    config = get_config(
        "7b",
        {
            "model": {
                "model_name": str(base4),
                "max_seq_length": 512,
                "use_unsloth": "never" if args.backend == "transformers" else "auto",
            },
            "training": {
                "max_steps": args.steps,
                "gradient_accumulation_steps": 1,
                "learning_rate": 2e-4,
                "warmup_ratio": 0.0,
                "lr_scheduler_type": "constant",
                "save_steps": 1000,
            },
        },
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            TRAIN,
            json.dumps(config.to_dict()),
            str(root / "data"),
            str(root / "adapter"),
            str(root / "cache"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-6000:])
        return 1
    result["training"] = json.loads(proc.stdout.strip().splitlines()[-1])
    print("trained:", result["training"], flush=True)

    try:
        plan_merge(str(base4))
        result["unknown_original"] = "no error (wrong)"
    except MergeError as e:
        result["unknown_original"] = str(e)[:120]

    vocab = json.loads((base16 / "config.json").read_text())["vocab_size"]
    ids = torch.randint(0, vocab - tb.N_SPECIAL, (2, 96), generator=torch.Generator().manual_seed(0))
    adapter = root / "adapter"
    ref = {
        "base16": logits_of(base16, None, ids),
        "base16+lora": logits_of(base16, adapter, ids),
        "base4+lora": logits_of(base4, adapter, ids),
    }
    result["adapter_effect"] = rel(ref["base16+lora"], ref["base16"])
    result["4bit_rounding"] = rel(ref["base4+lora"], ref["base16+lora"])
    # what bf16 rounding alone does to this model's logits: the same model and adapter computed in fp32
    result["bf16_noise_floor"] = rel(ref["base16+lora"], logits_of(base16, adapter, ids, dtype="float32"))
    import kto_pipeline.export.merge as merge

    on_gpu = merge._fits_on_gpu
    for name, plan in (
        ("original", plan_merge(str(base4), base_16bit=str(base16))),
        ("dequantize", plan_merge(str(base4), "dequantize")),
        ("dequantize_cpu", plan_merge(str(base4), "dequantize")),
    ):
        out = root / f"merged-{name}"
        merge._fits_on_gpu = (lambda *a, **k: False) if name.endswith("_cpu") else on_gpu  # a card too small
        t = time.time()
        info = merge_adapter(str(base4), adapter, out, plan=plan)
        wall = time.time() - t
        cfg = json.loads((out / "config.json").read_text())
        got = logits_of(out, None, ids)
        result[name] = {
            "merge_s": round(wall, 1),
            "dtype": info["dtype"],
            "size_gib": info["size_bytes"] / 2**30,
            "merged_into": info["merged_into"],
            "quantization_config": "quantization_config" in cfg,
            "vs_base16+lora": rel(got, ref["base16+lora"]),
            "vs_base4+lora": rel(got, ref["base4+lora"]),
        }
        print(name, result[name], flush=True)
        shutil.rmtree(out)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
