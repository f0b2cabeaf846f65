"""`kto chat PATH`: an interactive multi-turn chat in the terminal, streaming the answer as it is generated.

PATH is a merged model folder (transformers) or a .gguf file (llama.cpp). Commands: /reset starts a new
conversation (the system prompt stays), /exit (or Ctrl-D) quits; Ctrl-C stops the current answer.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Iterator
from typing import TextIO


def _printable(text: str) -> str:
    """Model output goes to a terminal: escape control characters so it cannot send escape sequences."""
    return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else f"\\x{ord(c):02x}" for c in text)


class ChatSession:
    """The conversation state behind `kto chat`, usable without a terminal."""

    def __init__(self, bot, system: str | None = None, **sampling):
        self.bot, self.system, self.sampling = bot, system, sampling
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    @property
    def turns(self) -> int:
        return sum(1 for m in self.messages if m["role"] == "user")

    def send(self, text: str) -> Iterator[str]:
        """Stream the answer to `text`; the turn is kept in the history once the stream ends (or is cut)."""
        self.messages.append({"role": "user", "content": text})
        pieces: list[str] = []
        try:
            for piece in self.bot.stream_chat(self.messages, **self.sampling):
                pieces.append(piece)
                yield piece
        finally:
            self.messages.append({"role": "assistant", "content": "".join(pieces)})


def chat_loop(session: ChatSession, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    def ask() -> str | None:
        if stdin is sys.stdin and stdout is sys.stdout:  # input() gives line editing on a terminal
            try:
                return input("you> ")
            except EOFError:
                return None
        stdout.write("you> ")
        stdout.flush()
        line = stdin.readline()
        return None if line == "" else line.rstrip("\n")

    while True:
        try:
            line = ask()
        except KeyboardInterrupt:
            line = None
        if line is None:  # Ctrl-D / Ctrl-C at the prompt
            stdout.write("\n")
            return 0
        cmd = line.strip()
        if not cmd:
            continue
        if cmd in ("/exit", "/quit"):
            return 0
        if cmd == "/reset":
            session.reset()
            stdout.write("(conversation cleared)\n")
            continue
        if cmd.startswith("/"):
            stdout.write(f"unknown command {cmd}; commands: /reset, /exit\n")
            continue
        stdout.write("assistant> ")
        stdout.flush()
        try:
            for piece in session.send(line):
                stdout.write(_printable(piece))
                stdout.flush()
        except KeyboardInterrupt:
            stdout.write(" [interrupted]")
        stdout.write("\n")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "chat", help="chat with a merged model folder or a .gguf file in the terminal", description=__doc__
    )
    p.add_argument("path", help="merged model folder (config.json + safetensors) or a .gguf file")
    p.add_argument("--system", default=None, help="system prompt kept at the start of every conversation")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling threshold")
    p.add_argument("--max-new-tokens", type=int, default=512, help="longest answer in tokens")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (reproducible answers)")
    p.add_argument("--n-ctx", type=int, default=4096, help="context length for GGUF models")
    p.set_defaults(func=run)


def run(args) -> int:
    from kto_pipeline.inference import InferenceError, KTOInference

    try:
        bot = KTOInference(args.path, n_ctx=args.n_ctx, seed=args.seed)
    except InferenceError as exc:
        print(f"kto chat: {exc}", file=sys.stderr)
        return 2
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens}
    if args.seed is not None:
        sampling["seed"] = args.seed
    session = ChatSession(bot, system=args.system, **sampling)
    print(f"kto chat: {args.path} ({bot.backend_name}). /reset starts over, /exit quits.", flush=True)
    try:
        return chat_loop(session)
    finally:
        bot.close()
