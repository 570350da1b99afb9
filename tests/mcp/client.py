#!/usr/bin/env python3
"""An MCP agent for the end-to-end tests, built with the official MCP Python SDK's client.

    python3 tests/mcp/client.py --url URL [--header NAME=VALUE]... \
        --generation legacy|modern|auto [--timeout SECONDS] SCENARIO [ARGS]

Performs one scenario and prints ONE JSON object on stdout, then exits 0 — also when the
server, or a gateway in between, refused: the refusal is reported as
`"error": {"code", "message", "data"}` (a JSON-RPC error, or one the SDK made from an HTTP
status) with `"http_status"`, or `"error": {"kind": "transport"|"timeout"|..., "message"}`
when no MCP answer came at all. Exit 2 is a usage error.

The generation is forced with the SDK's `Client(mode=...)`: `legacy` is `mode="legacy"`
(`initialize` handshake, `Mcp-Session-Id`), `modern` is `mode="2026-07-28"` (no handshake,
per-request `_meta` and `Mcp-Method`/`Mcp-Name` headers), `auto` is the SDK's default (probe
`server/discover`, fall back to `initialize`).

Every object has `generation`, `protocol_version` (negotiated; null if the connection never
got that far) and `http`: each HTTP exchange as the client saw it (method, the JSON-RPC
method or "response", the MCP headers sent, status, content type, `mcp-session-id`
answered). Scenarios and what they add:

    list-tools                        tools: [Tool]
    call TOOL JSON-ARGS               result: the CallToolResult as received (content,
                                      structuredContent, isError, _meta), text
    stream STEPS DELAY_MS             calls slow_count; progress: [{progress, total, message,
                                      server_ms, client_ms}], logs: [{data, client_ms}],
                                      started_ms, result_ms, result
    elicit NAME                       calls ask_name, answering its elicitation with NAME;
                                      elicitations: [params], result, text
    list-prompts                      prompts: [Prompt]
    get-prompt [NAME [JSON-ARGS]]     prompt: GetPromptResult (default greet {"name": "world"})
    list-resources                    resources: [Resource]
    read-resource [URI]               resource: ReadResourceResult (default res://motd)
    session                           session_id: the Mcp-Session-Id the server gave
                                      (null on modern), session_ids_sent: the ones later
                                      requests carried, result: an add(2, 3) call
    discover                          discover: the raw server/discover result (modern);
                                      on legacy the InitializeResult, its counterpart
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import time
import traceback
import warnings
from typing import Any

import anyio
import httpx2
from pydantic import BaseModel, ValidationError

import mcp_types as types
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

warnings.simplefilter("ignore")  # deprecation notices must not reach stdout or stderr noise

MODES = {"legacy": "legacy", "modern": "2026-07-28", "auto": "auto"}
MODERN_VERSION = MODES["modern"]
SERVER_TIME = re.compile(r"\bt=(\d+)\b")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dump(model: BaseModel) -> Any:
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


def text_of(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in getattr(result, "content", []) or [])


class HttpLog:
    """Every HTTP exchange of the client, from httpx2 event hooks (the SDK exposes neither
    statuses nor headers)."""

    MCP_HEADERS = ("mcp-protocol-version", "mcp-method", "mcp-name", "mcp-session-id", "last-event-id")

    def __init__(self) -> None:
        self.exchanges: list[dict[str, Any]] = []

    async def on_response(self, response: httpx2.Response) -> None:
        request = response.request
        rpc = None
        try:
            body = json.loads(request.content) if request.content else None
            if isinstance(body, dict):
                rpc = body.get("method", "response")
        except (ValueError, httpx2.RequestNotRead):
            pass
        self.exchanges.append(
            {
                "method": request.method,
                "rpc": rpc,
                "sent": {k: request.headers[k] for k in self.MCP_HEADERS if k in request.headers},
                "status": response.status_code,
                "content_type": response.headers.get("content-type"),
                "session_id": response.headers.get("mcp-session-id"),
            }
        )

    def error_status(self) -> int | None:
        """The last HTTP status of 400 or more, else the last status."""
        statuses = [e["status"] for e in self.exchanges]
        return next((s for s in reversed(statuses) if s >= 400), statuses[-1] if statuses else None)


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.http = HttpLog()
        self.out: dict[str, Any] = {"generation": args.generation, "protocol_version": None}
        self.elicit_answer: str | None = None

    def client(self, **kwargs: Any) -> tuple[httpx2.AsyncClient, Client]:
        http = httpx2.AsyncClient(
            headers=list(self.args.header),  # repeats kept, in order
            timeout=httpx2.Timeout(self.args.timeout),
            event_hooks={"response": [self.http.on_response]},
            trust_env=False,
        )
        client = Client(
            streamable_http_client(self.args.url, http_client=http),
            mode=MODES[self.args.generation],
            read_timeout_seconds=self.args.timeout,
            client_info=types.Implementation(name="lap-e2e-agent", version="1.0.0"),
            cache=None,
            **kwargs,
        )
        return http, client

    def handler(self) -> Any:
        """The scenario's method; exits 2 when there is none or its arguments do not fit."""
        scenario, rest = self.args.scenario, self.args.args
        handler = getattr(self, "do_" + scenario.replace("-", "_"), None)
        if handler is None:
            print(f"unknown scenario {scenario!r}", file=sys.stderr)
            sys.exit(2)
        try:
            inspect.signature(handler).bind(None, *rest)
        except TypeError as exc:
            print(f"wrong arguments for {scenario}: {exc}", file=sys.stderr)
            sys.exit(2)
        return handler

    async def run(self) -> None:
        scenario, rest = self.args.scenario, self.args.args
        handler = self.handler()
        self.out["scenario"] = scenario
        kwargs: dict[str, Any] = {}
        if scenario == "elicit":
            kwargs["elicitation_callback"] = self.on_elicit
        if scenario == "stream":
            kwargs["logging_callback"] = self.on_log
            kwargs["log_level"] = "info"  # modern servers log only to requests that opt in
        http, client = self.client(**kwargs)
        async with http, client:
            self.out["protocol_version"] = client.protocol_version
            self.keep_results_before_validation(client)
            await handler(client, *rest)

    def keep_results_before_validation(self, client: Client) -> None:
        """Record a tool result as it arrives, before the SDK validates it. To validate a result
        against its tool's outputSchema the SDK first lists the tools if it has not yet; when
        that listing is refused, the reply then has both the result and the error."""
        session = client.session
        validate = session.validate_tool_result

        async def record_then_validate(name: str, result: types.CallToolResult) -> None:
            self.out["result"] = dump(result)
            self.out["text"] = text_of(result)
            await validate(name, result)

        session.validate_tool_result = record_then_validate  # type: ignore[method-assign]

    # -- scenarios --------------------------------------------------------------------------

    async def do_list_tools(self, c: Client) -> None:
        self.out["tools"] = [dump(t) for t in (await c.list_tools()).tools]

    async def do_call(self, c: Client, tool: str, arguments: str = "{}") -> None:
        result = await c.call_tool(tool, json.loads(arguments))
        self.out["result"] = dump(result)
        self.out["text"] = text_of(result)

    async def do_stream(self, c: Client, steps: str, delay_ms: str) -> None:
        progress: list[dict[str, Any]] = []
        self.out["progress"] = progress
        self.out["logs"] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            m = SERVER_TIME.search(message or "")
            progress.append(
                {
                    "progress": value,
                    "total": total,
                    "message": message,
                    "server_ms": int(m.group(1)) if m else None,
                    "client_ms": now_ms(),
                }
            )

        self.out["started_ms"] = now_ms()
        result = await c.call_tool(
            "slow_count", {"steps": int(steps), "delay_ms": int(delay_ms)}, progress_callback=on_progress
        )
        self.out["result_ms"] = now_ms()
        self.out["result"] = dump(result)
        self.out["text"] = text_of(result)

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.out.setdefault("logs", []).append({"level": params.level, "data": params.data, "client_ms": now_ms()})

    async def do_elicit(self, c: Client, name: str) -> None:
        self.elicit_answer = name
        self.out["elicitations"] = []
        result = await c.call_tool("ask_name", {})
        self.out["result"] = dump(result)
        self.out["text"] = text_of(result)

    async def on_elicit(self, context: Any, params: Any) -> types.ElicitResult:
        self.out["elicitations"].append(dump(params))
        return types.ElicitResult(action="accept", content={"name": self.elicit_answer or ""})

    async def do_list_prompts(self, c: Client) -> None:
        self.out["prompts"] = [dump(p) for p in (await c.list_prompts()).prompts]

    async def do_get_prompt(self, c: Client, name: str = "greet", arguments: str = '{"name": "world"}') -> None:
        self.out["prompt"] = dump(await c.get_prompt(name, json.loads(arguments)))

    async def do_list_resources(self, c: Client) -> None:
        self.out["resources"] = [dump(r) for r in (await c.list_resources()).resources]

    async def do_read_resource(self, c: Client, uri: str = "res://motd") -> None:
        self.out["resource"] = dump(await c.read_resource(uri))

    async def do_session(self, c: Client) -> None:
        given = [e["session_id"] for e in self.http.exchanges if e["session_id"]]
        self.out["session_id"] = given[0] if given else None
        before = len(self.http.exchanges)
        result = await c.call_tool("add", {"a": 2, "b": 3})
        self.out["result"] = dump(result)
        self.out["text"] = text_of(result)
        self.out["session_ids_sent"] = [e["sent"].get("mcp-session-id") for e in self.http.exchanges[before:]]

    async def do_discover(self, c: Client) -> None:
        if c.session.initialize_result is not None:
            self.out["initialize"] = dump(c.session.initialize_result)
        else:
            self.out["discover"] = await c.session.send_discover(c.protocol_version or MODERN_VERSION)


def first_error(exc: BaseException) -> BaseException:
    """The MCPError inside a (nested) exception group if there is one, else the first leaf."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [first_error(e) for e in exc.exceptions]
        return next((e for e in leaves if isinstance(e, MCPError)), leaves[0])
    return exc


def describe(exc: BaseException) -> dict[str, Any]:
    exc = first_error(exc)
    if isinstance(exc, MCPError):
        return {"code": exc.code, "message": exc.message, "data": exc.data}
    if isinstance(exc, TimeoutError):
        return {"kind": "timeout", "message": str(exc) or "timed out"}
    if isinstance(exc, httpx2.TransportError):
        return {"kind": "transport", "type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, ValidationError):
        return {"kind": "invalid-result", "message": str(exc)}
    return {"kind": "exception", "type": type(exc).__name__, "message": str(exc)}


def header_arg(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def main() -> None:
    p = argparse.ArgumentParser(description="An MCP agent for the end-to-end tests: one scenario, one JSON object.")
    p.add_argument("--url", required=True)
    p.add_argument("--header", type=header_arg, action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--generation", choices=sorted(MODES), required=True)
    p.add_argument("--timeout", type=float, default=30.0, help="limit for the whole scenario, seconds")
    p.add_argument("scenario")
    p.add_argument("args", nargs="*")
    args = p.parse_args()

    agent = Agent(args)
    agent.handler()

    async def bounded() -> None:
        with anyio.fail_after(args.timeout):
            await agent.run()

    try:
        anyio.run(bounded)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:  # reported, not raised: refusals are what the tests look at
        agent.out["error"] = describe(exc)
        agent.out["http_status"] = agent.http.error_status()
        traceback.print_exception(exc, file=sys.stderr)
    agent.out["http"] = agent.http.exchanges
    print(json.dumps(agent.out))


if __name__ == "__main__":
    main()
