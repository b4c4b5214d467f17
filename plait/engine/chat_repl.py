"""`plait chat`: a terminal chat that streams tokens through AsyncLLM as they are generated."""

from __future__ import annotations

import asyncio
import sys

from plait.params import SamplingParams


def run_chat(engine_kwargs: dict, params: SamplingParams, system: str | None) -> int:
    from plait.engine.async_llm import AsyncLLM

    engine = AsyncLLM(verbose=True, **engine_kwargs)
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    print("Type a message; /reset clears the conversation, /exit or Ctrl-D quits.")
    try:
        while True:
            try:
                line = input("> ")
            except EOFError:
                print()
                return 0
            if line.strip() in ("/exit", "/quit"):
                return 0
            if line.strip() == "/reset":
                messages = messages[:1] if system else []
                continue
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line})
            prompt = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            ids = engine.tokenizer.encode(prompt, add_special_tokens=False)
            reply = asyncio.run(_stream(engine, ids, params))
            messages.append({"role": "assistant", "content": reply})
    except KeyboardInterrupt:
        print()
        return 0
    finally:
        engine.shutdown()


async def _stream(engine, ids: list[int], params: SamplingParams) -> str:
    parts = []
    async for out in engine.generate(ids, params):
        text = out.outputs[0].text
        parts.append(text)
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(parts)
