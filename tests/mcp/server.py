#!/usr/bin/env python3
"""An upstream MCP server for the end-to-end tests, built with the official MCP Python SDK.

One streamable-HTTP endpoint, `/mcp`, serves both protocol generations: the legacy one
(`initialize` handshake, `Mcp-Session-Id`, server-to-client requests on the POST's SSE
stream; 2025-11-25 and earlier) and the modern one (2026-07-28: no handshake, every request
carries its version in `_meta` and the `MCP-Protocol-Version`/`Mcp-Method`/`Mcp-Name`
headers). The SDK's session manager routes each request by its `MCP-Protocol-Version`
header: absent or a handshake-era version goes to the legacy transport, anything else to
the modern one.

    python3 tests/mcp/server.py --port P [--name NAME] [--require-header NAME=VALUE]
                                [--json-response]

Listens on 127.0.0.1 only and prints `READY <port>` on stdout once it accepts connections
(`--port 0` lets the kernel choose). Logs go to stderr. `GET /hits` answers how many
messages of each kind reached the server (see `Hits`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Annotated, Any

import uvicorn
from pydantic import BaseModel, Field

from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve


# What tools report about themselves (`finished:<tool>`, `cancelled:<tool>`), served with the
# message counts at `GET /hits`.
EVENTS: dict[str, int] = {}


def note(event: str) -> None:
    EVENTS[event] = EVENTS.get(event, 0) + 1


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Name(BaseModel):
    name: str = Field(description="Your name")


def ask_for_name() -> Elicit[Name]:
    """Resolver for `ask_name`: the SDK turns this into an `elicitation/create` request on a
    legacy connection and into an `InputRequiredResult` (MRTR) on a modern one."""
    return Elicit("What is your name?", Name)


def build(name: str) -> MCPServer:
    mcp = MCPServer(name, version="1.0.0", instructions="LAP Gateway end-to-end test fixture")

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @mcp.tool()
    def pay(amount: int, to: str) -> str:
        """Pay `amount` to `to`."""
        return f"paid {amount} to {to}"

    @mcp.tool()
    def whoami(ctx: Context) -> dict[str, Any]:
        """The HTTP request this server received: header names lower-case, a repeated header's
        values joined with ", " in `headers`, every header in arrival order in `raw_headers`."""
        request = ctx.request_context.request
        raw: list[list[str]] = []
        headers: dict[str, str] = {}
        if request is not None:
            for k, v in request.headers.raw:
                key, value = k.decode("latin-1").lower(), v.decode("latin-1")
                raw.append([key, value])
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return {
            "server": mcp.name,
            "protocol_version": ctx.protocol_version,
            "headers": headers,
            "raw_headers": raw,
        }

    @mcp.tool()
    async def slow_count(steps: int, delay_ms: int, ctx: Context) -> str:
        """Send one progress notification (and one log message) per step, `delay_ms` apart.
        Each message reads `step I/N t=<server wall clock, ms>`."""
        steps = max(0, min(steps, 1000))
        delay = max(0, min(delay_ms, 10_000)) / 1000
        try:
            for i in range(1, steps + 1):
                if i > 1:
                    await asyncio.sleep(delay)
                text = f"step {i}/{steps} t={now_ms()}"
                await ctx.report_progress(i, steps, text)
                await ctx.info(text)
        except asyncio.CancelledError:
            note("cancelled:slow_count")
            raise
        note("finished:slow_count")
        return f"counted {steps}"

    @mcp.tool()
    def ask_name(who: Annotated[Name, Resolve(ask_for_name)]) -> str:
        """Ask the client for a name (elicitation), then greet it."""
        return f"hello {who.name}"

    @mcp.tool()
    def big(n: int) -> str:
        """A string of `n` bytes."""
        return "x" * max(0, n)

    @mcp.prompt()
    def greet(name: str) -> str:
        """A greeting prompt."""
        return f"Please greet {name} warmly."

    @mcp.resource("res://motd", name="motd", mime_type="text/plain")
    def motd() -> str:
        """Message of the day."""
        return f"message of the day from {mcp.name}"

    return mcp


class RequireHeader:
    """ASGI middleware: 401 without the header, 403 with another value (the tool credential a
    gateway must inject)."""

    def __init__(self, app: Any, name: str, value: str) -> None:
        self.app = app
        self.name = name.lower().encode("latin-1")
        self.value = value.encode("latin-1")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        got = [v for k, v in scope["headers"] if k == self.name]
        if got == [self.value]:
            await self.app(scope, receive, send)
            return
        status, why = (401, "missing") if not got else (403, "wrong")
        body = json.dumps({"error": f"{why} {self.name.decode()} header"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class Hits:
    """ASGI middleware, outermost: counts every JSON-RPC message that reaches this process —
    `tools/call:<tool>` for tool calls, the method for other requests and notifications,
    `response` for a client's answer, the HTTP method for GET/DELETE — and serves the counts
    at `GET /hits`. Tests use it to prove that what the gateway refused never got here."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.counts: dict[str, int] = {}

    def count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "GET" and scope["path"] == "/hits":
            body = json.dumps({**self.counts, **EVENTS}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if scope["method"] != "POST":
            self.count(scope["method"])
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            msg = json.loads(body)
            key = msg.get("method") or "response"
            if key == "tools/call":
                key += ":" + str(msg.get("params", {}).get("name"))
        except (ValueError, AttributeError):
            key = "invalid"
        self.count(key)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def header_arg(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


async def serve(args: argparse.Namespace) -> None:
    mcp = build(args.name)
    app: Any = mcp.streamable_http_app(json_response=args.json_response)
    if args.require_header is not None:
        app = RequireHeader(app, *args.require_header)
    app = Hits(app)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises the reason it could not start
            raise SystemExit("server stopped before it started")
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    await task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default="fixture")
    p.add_argument("--require-header", type=header_arg, metavar="NAME=VALUE")
    p.add_argument("--json-response", action="store_true", help="answer application/json instead of SSE")
    args = p.parse_args()
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
