"""Use a trained model: `KTOInference(path)` over merged Hugging Face weights or a GGUF file.

    from kto_pipeline.inference import KTOInference
    bot = KTOInference("artifacts/merged_model/<version>")        # transformers
    bot = KTOInference("artifacts/gguf_quantizations/<v>/model-Q4_K_M.gguf")  # llama.cpp
    bot.generate("What is machine learning?", temperature=0.7, max_new_tokens=512)
    bot.chat([{"role": "user", "content": "Hello!"}])
    for piece in bot.stream_chat(messages): print(piece, end="")

Both backends format conversations with the model's own chat template (tokenizer_config/chat_template.jinja
for transformers, `tokenizer.chat_template` in the GGUF metadata for llama.cpp) and stop at its end-of-turn
token. temperature <= 0 means greedy decoding, which is deterministic on both backends.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

Messages = list[dict[str, str]]


class InferenceError(RuntimeError):
    pass


def _check_messages(messages: Messages) -> Messages:
    if not isinstance(messages, list) or not messages:
        raise InferenceError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InferenceError(f"messages[{i}] must be a dict with string 'role' and 'content', got {m!r}")
    return messages


class _HFBackend:
    name = "transformers"

    def __init__(self, path: Path, device: str | None, dtype: str, trust_remote_code: bool):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto" and self.device == "cpu":
            dtype = "float32"  # 16-bit matmuls on a CPU are slow and lossy: SmolLM2 in bf16 loops where fp32 answers
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()
        self.has_template = bool(getattr(self.tokenizer, "chat_template", None))

    def _inputs(self, messages: Messages | None, text: str | None):
        if messages is not None:
            enc = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            )
        else:
            enc = self.tokenizer(text, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def _gen_kwargs(self, inputs, temperature, max_new_tokens, top_p, seed):
        if seed is not None:
            self.torch.manual_seed(seed)
        tok = self.tokenizer
        kw = dict(
            **inputs,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
        if temperature and temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def stream(self, messages, text, temperature, max_new_tokens, top_p, seed) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        inputs = self._inputs(messages, text)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kw = self._gen_kwargs(inputs, temperature, max_new_tokens, top_p, seed)
        failure: list[BaseException] = []
        stop = threading.Event()  # set when the caller stops reading (Ctrl-C in `kto chat`)

        def stopped(input_ids, scores, **_):
            return self.torch.full((input_ids.shape[0],), stop.is_set(), dtype=self.torch.bool)

        def run():
            try:
                with self.torch.inference_mode():
                    self.model.generate(**kw, streamer=streamer, stopping_criteria=[stopped])
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            yield from (piece for piece in streamer if piece)  # "" comes while a character is still partial
        finally:
            stop.set()
            worker.join()
        if failure:
            raise failure[0]

    def complete(self, messages, text, temperature, max_new_tokens, top_p, seed) -> str:
        inputs = self._inputs(messages, text)
        with self.torch.inference_mode():
            out = self.model.generate(**self._gen_kwargs(inputs, temperature, max_new_tokens, top_p, seed))
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


class _GGUFBackend:
    name = "llama.cpp"

    def __init__(self, path: Path, n_ctx: int, n_threads: int | None, seed: int | None):
        try:
            from kto_pipeline.export import llama
        except ImportError as exc:
            raise InferenceError(
                "GGUF inference needs llama-cpp-python (pip install llama-cpp-python==0.3.36)"
            ) from exc
        kw = {"seed": seed} if seed is not None else {}
        self.llm = llama.load(path, n_ctx=n_ctx, n_threads=n_threads, verbose=False, **kw)
        self.has_template = bool(self.llm.metadata.get("tokenizer.chat_template"))
        # Free the model before interpreter teardown: Llama.__del__ at exit fails once ctypes is gone.
        atexit.register(_close_llama, weakref.ref(self.llm))

    def close(self) -> None:
        self.llm.close()

    def _sampling(self, temperature, max_new_tokens, top_p, seed):
        greedy = not temperature or temperature <= 0
        kw = dict(max_tokens=max_new_tokens, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p)
        if seed is not None:
            kw["seed"] = seed
        return kw

    def stream(self, messages, text, temperature, max_new_tokens, top_p, seed) -> Iterator[str]:
        kw = self._sampling(temperature, max_new_tokens, top_p, seed)
        if messages is not None:
            for chunk in self.llm.create_chat_completion(messages=messages, stream=True, **kw):
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    yield piece
        else:
            for chunk in self.llm.create_completion(prompt=text, stream=True, **kw):
                piece = chunk["choices"][0]["text"]
                if piece:
                    yield piece

    def complete(self, messages, text, temperature, max_new_tokens, top_p, seed) -> str:
        return "".join(self.stream(messages, text, temperature, max_new_tokens, top_p, seed))


def _close_llama(ref) -> None:
    llm = ref()
    if llm is not None:
        llm.close()


class KTOInference:
    """Generate with a merged HF model folder (transformers) or a .gguf file (llama.cpp)."""

    def __init__(
        self,
        path: str | Path,
        *,
        device: str | None = None,
        dtype: str = "auto",
        n_ctx: int = 4096,
        n_threads: int | None = None,
        seed: int | None = None,
        trust_remote_code: bool = False,
    ):
        self.path = Path(path)
        if self.path.is_file() and self.path.suffix == ".gguf":
            self.backend = _GGUFBackend(self.path, n_ctx, n_threads, seed)
        elif self.path.is_dir() and (self.path / "config.json").is_file():
            self.backend = _HFBackend(self.path, device, dtype, trust_remote_code)
        elif self.path.is_dir() and list(self.path.glob("*.gguf")):
            names = ", ".join(sorted(p.name for p in self.path.glob("*.gguf")))
            raise InferenceError(f"{self.path} holds GGUF files but no config.json; pass one file: {names}")
        elif self.path.is_dir() and (self.path / "adapter_config.json").is_file():
            raise InferenceError(
                f"{self.path} is a LoRA adapter; merge it first (the merged_model asset) "
                "or release it with save method merged_16bit"
            )
        else:
            raise InferenceError(
                f"{path} is neither a model folder with config.json nor a .gguf file "
                "(Hub repos must be downloaded first: hf download REPO --local-dir DIR)"
            )

    def close(self) -> None:
        """Free llama.cpp memory now (transformers models are freed by the garbage collector)."""
        if hasattr(self.backend, "close"):
            self.backend.close()

    def __enter__(self) -> KTOInference:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def _messages(self, prompt: str, system: str | None) -> Messages:
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]

    def _need_template(self) -> None:
        if not self.backend.has_template:
            raise InferenceError(f"{self.path} has no chat template; use generate(..., use_chat_template=False)")

    def generate(
        self,
        prompt: str,
        temperature: float = 0.7,
        max_new_tokens: int = 512,
        top_p: float = 0.9,
        *,
        system: str | None = None,
        use_chat_template: bool = True,
        seed: int | None = None,
    ) -> str:
        """One answer to one prompt, formatted as a user turn by the chat template (raw text if asked)."""
        if use_chat_template:
            self._need_template()
            return self.backend.complete(self._messages(prompt, system), None, temperature, max_new_tokens, top_p, seed)
        return self.backend.complete(None, prompt, temperature, max_new_tokens, top_p, seed)

    def chat(
        self,
        messages: Messages,
        temperature: float = 0.7,
        max_new_tokens: int = 512,
        top_p: float = 0.9,
        *,
        seed: int | None = None,
    ) -> str:
        """The assistant's next turn after `messages` (a list of {role, content})."""
        self._need_template()
        return self.backend.complete(_check_messages(messages), None, temperature, max_new_tokens, top_p, seed)

    def stream_chat(
        self,
        messages: Messages,
        temperature: float = 0.7,
        max_new_tokens: int = 512,
        top_p: float = 0.9,
        *,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Like chat(), yielding text pieces as they are generated."""
        self._need_template()
        return self.backend.stream(_check_messages(messages), None, temperature, max_new_tokens, top_p, seed)

    def stream_generate(
        self,
        prompt: str,
        temperature: float = 0.7,
        max_new_tokens: int = 512,
        top_p: float = 0.9,
        *,
        use_chat_template: bool = True,
        seed: int | None = None,
    ) -> Iterator[str]:
        if use_chat_template:
            return self.stream_chat(self._messages(prompt, None), temperature, max_new_tokens, top_p, seed=seed)
        return self.backend.stream(None, prompt, temperature, max_new_tokens, top_p, seed)
