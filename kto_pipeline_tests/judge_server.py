"""A real OpenAI-compatible chat server on localhost for the judge tests.

Run as `python -m kto_pipeline_tests.judge_server PORT`.

The request's `model` picks how it answers:
  html      200 with an HTML page (a proxy's error page, not an API)
  status    503 with a JSON error
  nonsense  a well-formed chat completion whose text is no verdict (and quotes the Authorization header back)
  first     always {"winner": "A"}: a judge that only prefers the first position
  marked    the answer containing "GOOD" wins; a tie when both or neither do
"""

from __future__ import annotations

import json
import re
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route


def _completion(content: str) -> JSONResponse:
    return JSONResponse(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": "test",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }
    )


async def chat(request: Request):
    body = await request.json()
    mode = body.get("model")
    if mode == "html":
        return HTMLResponse("<html><body>502 Bad Gateway</body></html>")
    if mode == "status":
        return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
    if mode == "nonsense":
        return _completion(f"I like turtles. You sent {request.headers.get('authorization')}")
    if mode == "first":
        return _completion(json.dumps({"winner": "A", "reason": "A comes first"}))
    text = body["messages"][-1]["content"]
    a, b = re.search(r"\[Answer A\]\n(.*)\n\n\[Answer B\]\n(.*)", text, re.S).groups()
    winner = "tie" if ("GOOD" in a) == ("GOOD" in b) else "A" if "GOOD" in a else "B"
    return _completion(f'```json\n{{"winner": "{winner}", "reason": "{winner} is marked GOOD"}}\n```')


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
