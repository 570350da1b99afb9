#!/usr/bin/env python3
"""LAP gateway benchmark driver (stdlib only). See tests/bench/run.sh and docs/performance.md.

The system under test (SUT) runs pinned to CPU 0 with one worker; wrk and the upstream nginx
share CPU 1. Each configuration gets a warm-up, then ROUNDS runs of DURATION seconds; the table
shows the median with min-max. Every process started here is stopped in a finally block.
"""
import base64, hashlib, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.parse, urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
REL = os.path.join(ROOT, "target", "release")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = int(os.environ.get("DURATION", "10"))
WARMUP = int(os.environ.get("WARMUP", "2"))
CONNS = [int(c) for c in os.environ.get("CONNS", "32 256").split()]
TARGETS = os.environ.get("TARGETS", "direct pingora nginx gateway full").split()
# Another lap-gateway binary (e.g. the previous release) measured in the same run, as targets
# "gateway-base" and "full-base", so that a change is compared under the same conditions.
BASELINE_BIN = os.environ.get("BASELINE_BIN")
if BASELINE_BIN:
    TARGETS += [t + "-base" for t in ("gateway", "full") if t in TARGETS]
RATE = int(os.environ.get("RATE", "500"))
SIGNATURES = int(os.environ.get("SIGNATURES", "200000"))
NCPU = os.cpu_count() or 1
SUT_CPU, LOAD_CPU = ("0", "1") if NCPU >= 2 else ("0", "0")
API_KEY = "bench-key-0123456789abcdef"
SEED = "5a" * 32
PORTS = {"upstream": 28181, "pingora": 28182, "nginx": 28183, "gateway": 28184,
         "gateway_admin": 28185, "full": 28186, "full_admin": 28187,
         "gateway-base": 28188, "gateway-base_admin": 28189, "full-base": 28190, "full-base_admin": 28191,
         "mcp": 28192, "mcp_admin": 28193, "mcp-full": 28194, "mcp-full_admin": 28195,
         "pingora-like": 28196, "full-per": 28197, "full-per_admin": 28198,
         "full-oneshot": 28199, "full-oneshot_admin": 28200, "full-slow": 28201, "full-slow_admin": 28202,
         "full-limits": 28203, "full-limits_admin": 28204, "full-redis": 28205, "full-redis_admin": 28206,
         "gateway-jwt-rs256": 28207, "gateway-jwt-rs256_admin": 28208,
         "gateway-jwt-eddsa": 28209, "gateway-jwt-eddsa_admin": 28210,
         "gateway-jwt-rs256-nocache": 28211, "gateway-jwt-rs256-nocache_admin": 28212,
         "gateway-jwt-eddsa-nocache": 28213, "gateway-jwt-eddsa-nocache_admin": 28214,
         "gateway-mtls": 28215, "gateway-mtls_admin": 28216, "gateway-mtls_tls": 28217}
# Full-path variants (add them to TARGETS): "full-per" the per-receipt evidence mode (one DSSE
# signature per receipt, the previous default); "full-oneshot" an external signer by the seed's
# contract (one `lap-signer sign` process per signature); "full-slow" an external co-process
# signer taking SLOW_SIGNER_MS (100) per signature, like a hardware signer.
SLOW_SIGNER_MS = int(os.environ.get("SLOW_SIGNER_MS", "100"))
# Limits (add them to TARGETS): "full-limits" the full path plus one [[limits.rate]] and one
# [[limits.budget]] (calls a day) that never refuse at bench load, in the embedded state store;
# "full-redis" the same limits in a redis-server started here on a free port on the load CPU
# (skipped with a note when redis-server is not installed), its append-only file synced as
# REDIS_APPENDFSYNC says ("everysec", "always" or "no").
# JWT (add them to TARGETS): "gateway-jwt-rs256" and "gateway-jwt-eddsa", the auth + policy path of
# "gateway" authenticated by a bearer JWT (RS256 or EdDSA) instead of the API key. The issuer's
# keys come from a jwks_file (no provider needed); wrk sends one token, so after the first call
# the verified-token cache answers (a hash, no signature check), as for an agent reusing its token.
# "gateway-jwt-rs256-nocache" and "gateway-jwt-eddsa-nocache": the same with the verified-token
# cache off ([auth] jwt_cache_entries = 0), so every call pays the signature check.
# mTLS (add them to TARGETS): one gateway (auth + policy) with an HTTPS listener and client
# certificates as identities (certificates by certs/gen-certs.sh, SPIFFE ID mapped to the bench
# agent), measured three ways: "gateway-mtls" a client certificate over TLS, "gateway-tls-key"
# the API key over the same TLS listener (no certificate: TLS without mTLS identity), both driven
# by tests/bench/tls-load (wrk cannot present a client certificate; keep-alive, one handshake
# per connection outside the measured window); and "gateway-xfcc" the certificate as nginx
# forwards it (X-Client-Cert from a trusted proxy address) over plain HTTP with wrk.
MTLS_TARGETS = ("gateway-mtls", "gateway-tls-key", "gateway-xfcc")
JWT_ISSUER = "https://bench-idp.example"
JWT_AUDIENCE = "https://bench-gw.example"
REDIS_APPENDFSYNC = os.environ.get("REDIS_APPENDFSYNC", "everysec")
if REDIS_APPENDFSYNC not in ("everysec", "always", "no"):
    sys.exit(f"REDIS_APPENDFSYNC={REDIS_APPENDFSYNC!r}: must be everysec, always or no")
# Extra fixed rates (open loop) for the added-latency table, e.g. "500 3000".
RATES = [int(r) for r in os.environ.get("RATES", str(RATE)).split()]
# An MCP tools/call in the 2026-07-28 generation (no session: every request stands alone), and
# the upstream's fixed answer to it. Targets "mcp-direct" (the upstream), "mcp" and "mcp-full"
# (the gateway without and with evidence) measure the MCP path; add them to TARGETS.
MCP_CALL = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
    "name": "echo", "arguments": {"text": "x" * 800, "amount": 42},
    "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
              "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
              "io.modelcontextprotocol/clientCapabilities": {}}}})
MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "echo"}
MCP_ANSWER = '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}],"isError":false,"resultType":"complete"}}'

procs = []
work = tempfile.mkdtemp(prefix="lap-bench-")


def pinned(cpu, cmd):
    return ["taskset", "-c", cpu] + cmd if shutil.which("taskset") else cmd


def start(name, cmd, env=None, cwd=None):
    log = open(os.path.join(work, name + ".log"), "w")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    procs.append(p)
    return p


def wait_http(url, headers=None, timeout=15, data=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            req = urllib.request.Request(url, headers=headers or {}, data=data)
            with urllib.request.urlopen(req, timeout=1) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as e:
            if e.code < 500:
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError("not ready: " + url)


def nginx_conf(name, body):
    d = os.path.join(work, name)
    os.makedirs(os.path.join(d, "logs"), exist_ok=True)
    user = "user root root;" if os.geteuid() == 0 else ""
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(f"""worker_processes 1; {user}
pid logs/nginx.pid; error_log logs/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 120s;
  client_body_temp_path logs/cb; proxy_temp_path logs/px;
  {body}
}}""")
    return ["nginx", "-p", d, "-c", os.path.join(d, "nginx.conf"), "-g", "daemon off;"]


def body_file():
    payload = {"tool": "search", "query": "x" * 900, "limit": 10, "amount": 42}
    data = json.dumps(payload)
    path = os.path.join(work, "body.json")
    open(path, "w").write(data)
    lua = os.path.join(work, "post.lua")
    open(lua, "w").write(f"""
local f = io.open("{path}", "r"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Api-Key"] = "{API_KEY}"
""")
    return lua, len(data)


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt_material(alg):
    """A JWKS (one key made by openssl) and a day-long token signed with it, for alg RS256 or EdDSA."""
    d = os.path.join(work, "jwt-" + alg)
    os.makedirs(d, exist_ok=True)
    key = os.path.join(d, "key.pem")

    def ossl(*args):
        return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout
    if alg == "RS256":
        ossl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key)
        modulus = ossl("rsa", "-in", key, "-noout", "-modulus").decode().strip().split("=", 1)[1]
        jwk = {"kty": "RSA", "n": b64url(bytes.fromhex(modulus)), "e": "AQAB"}
    else:
        ossl("genpkey", "-algorithm", "ed25519", "-out", key)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(ossl("pkey", "-in", key, "-pubout", "-outform", "DER")[-32:])}
    jwk.update(kid="bench-1", alg=alg, use="sig")
    now = int(time.time())
    header = b64url(json.dumps({"alg": alg, "typ": "at+jwt", "kid": "bench-1"}).encode())
    claims = b64url(json.dumps({"iss": JWT_ISSUER, "sub": "bench-agent", "aud": JWT_AUDIENCE, "iat": now,
                                "exp": now + 86400, "groups": ["bench"], "scope": "bench"}).encode())
    msg = os.path.join(d, "signing-input")
    open(msg, "w").write(f"{header}.{claims}")
    if alg == "RS256":
        sig = ossl("dgst", "-sha256", "-sign", key, msg)
    else:
        sig = ossl("pkeyutl", "-sign", "-rawin", "-inkey", key, "-in", msg)
    return json.dumps({"keys": [jwk]}), f"{header}.{claims}.{b64url(sig)}"


def jwt_toml(alg):
    return f"""
[[auth.jwt]]
issuer = "{JWT_ISSUER}"
jwks_file = "jwks.json"
audiences = ["{JWT_AUDIENCE}"]
algorithms = ["{alg}"]
groups_claim = "groups"
"""


def jwt_lua(name, token):
    """The POST of body_file() with `Authorization: Bearer <token>` instead of the API key."""
    lua = os.path.join(work, name + ".lua")
    open(lua, "w").write(open(os.path.join(work, "post.lua")).read().replace(
        f'wrk.headers["X-Api-Key"] = "{API_KEY}"', f'wrk.headers["Authorization"] = "Bearer {token}"'))
    return lua


def mtls_material():
    """A CA, the server certificate and a SPIFFE client certificate (spiffe://lap.test/agent/demo)
    made by certs/gen-certs.sh, and the client certificate URL-encoded as nginx forwards it."""
    d = os.path.join(work, "certs")
    subprocess.run(["bash", os.path.join(ROOT, "certs", "gen-certs.sh"), d, "localhost",
                    "spiffe://lap.test/agent/demo"], check=True, capture_output=True)
    pem = open(os.path.join(d, "agent.crt")).read()
    return d, urllib.parse.quote(pem, safe="")


def mtls_toml(certs):
    return f"""
[tls]
listen = "127.0.0.1:{PORTS['gateway-mtls_tls']}"
cert_file = "{certs}/server.crt"
key_file = "{certs}/server.key"
[mtls]
client_auth = "optional"
client_ca_files = ["{certs}/ca.crt"]
identity = true
trust_domains = ["lap.test"]
trusted_proxies = ["127.0.0.1"]
[[mtls.identities]]
spiffe_id = "spiffe://lap.test/agent/demo"
agent_id = "bench-agent"
groups = ["bench"]
"""


def run_tls_load(path, conns, seconds, certs, client_cert, pid=None):
    """One tls-load run over the gateway's HTTPS listener, with the client certificate (mTLS
    identity) or the API key: the same tuple as run_wrk."""
    cmd = [os.path.join(REL, "tls-load"), "--url", f"https://localhost:{PORTS['gateway-mtls_tls']}{path}",
           "--ca", os.path.join(certs, "ca.crt"), "--connections", str(conns), "--seconds", str(seconds),
           "--method", "POST", "--body-file", os.path.join(work, "body.json"),
           "--header", "Content-Type: application/json"]
    if client_cert:
        cmd += ["--cert", os.path.join(certs, "agent.crt"), "--key", os.path.join(certs, "agent.key")]
    else:
        cmd += ["--header", f"X-Api-Key: {API_KEY}"]
    cpu0 = cpu_seconds(pid)
    out = subprocess.run(pinned(LOAD_CPU, cmd), capture_output=True, text=True, timeout=seconds + 60)
    cpu = cpu_seconds(pid) - cpu0
    r = json.loads(out.stdout)
    if r["errors"]:
        raise RuntimeError(f"tls-load: {r['errors']} connection errors: {out.stderr}")
    cpu_us = cpu * 1e6 / r["requests"] if pid is not None and r["requests"] else float("nan")
    return r["rps"], r["p50_ms"], r["p99_ms"], r["non_2xx"], cpu_us


def mcp_lua():
    path = os.path.join(work, "mcp.json")
    open(path, "w").write(MCP_CALL)
    lua = os.path.join(work, "mcp.lua")
    headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in MCP_HEADERS.items())
    open(lua, "w").write(f"""
local f = io.open("{path}", "r"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body
{headers}wrk.headers["X-Api-Key"] = "{API_KEY}"
""")
    return lua


def gateway_dir(name, port, admin, evidence, extra="", auth_extra=""):
    """A gateway's directory: key file, policy and gateway.toml, with `extra` TOML appended."""
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    h = hashlib.sha256(API_KEY.encode()).hexdigest()
    open(os.path.join(d, "keys.json"), "w").write(json.dumps(
        {"keys": [{"id": "bench", "hash": "sha256:" + h, "agent_id": "bench-agent", "groups": ["bench"]}]}))
    open(os.path.join(d, "policy.cedar"), "w").write(
        '@id("bench") permit(principal in Group::"bench", action in [Action::"read", Action::"write"], '
        'resource == Tool::"up");\n'
        '@id("bench-mcp") permit(principal in Group::"bench", action == Action::"tools/call", '
        'resource == McpTool::"mcp/echo");\n')
    open(os.path.join(d, "gateway.toml"), "w").write(f"""
[server]
listen = "127.0.0.1:{port}"
threads = 1
pid_file = "gw.pid"
upgrade_sock = "gw.sock"
[admin]
listen = "127.0.0.1:{admin}"
allow_unauthenticated_loopback = true
[auth]
api_keys_file = "keys.json"
{auth_extra}
[policy]
file = "policy.cedar"
[evidence]
required = {"true" if evidence else "false"}
[admission]
# wrk opens up to 256 connections from one address (with Pingora and nginx uncapped alike).
max_connections_per_address = 0
[log]
dir = "log"
[tools.up]
upstream = "http://127.0.0.1:{PORTS['upstream']}/"
[mcp.servers.mcp]
upstream = "http://127.0.0.1:{PORTS['upstream']}/mcp"
""" + extra)
    return d


def limits_toml(backend):
    """The state store and limits of "full-limits" and "full-redis": a rate limit and a daily call
    budget on the bench's tool, far above what the bench can send, so that every call is counted
    and none refused. The store's deadline is 1 s rather than 50 ms: a refusal is a non-2xx answer
    and ends the run, and a saturated run must not end on one slow fsync; the latency percentiles
    show what the store took."""
    return f"""
[state]
backend = "{backend}"
deadline_ms = 1000
[[limits.rate]]
scope = "principal_tool"
count = 10000000
per = "1s"
burst = 1000000
tools = ["up"]
[[limits.budget]]
scope = "principal_tool"
window = "day"
calls = 1000000000000
tools = ["up"]
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port):
    """A redis-server on 127.0.0.1:port, on the load CPU like the upstream (another machine, in
    production); stopped with every other process. Returns when it answers PING."""
    d = os.path.join(work, "redis")
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "redis.conf")
    with open(conf, "w") as f:
        f.write(f'bind 127.0.0.1\nport {port}\ndir {d}\nsave ""\nappendonly yes\n'
                f"appendfsync {REDIS_APPENDFSYNC}\ndaemonize no\nloglevel warning\n")
    p = start("redis", pinned(LOAD_CPU, ["redis-server", conf]))
    deadline = time.time() + 15
    while time.time() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"redis-server exited ({p.returncode}); see its log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"redis-server not ready on port {port}")


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid):
    """(ppid, utime + stime in ticks) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def cpu_seconds(pid):
    """CPU time used so far by a process and its direct children (nginx workers)."""
    if pid is None:
        return 0.0
    own = _stat(pid)
    ticks = own[1] if own else 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(entry)
            if st and st[0] == pid:
                ticks += st[1]
    return ticks / CLK_TCK


def busy_fraction(seconds=1.0):
    """Share of all CPUs busy over a short window (other work on the machine skews results)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpus": NCPU, "cpu_model": model, "kernel": " ".join(os.uname()[i] for i in (0, 2))}


def run_wrk(url, conns, lua, seconds, pid=None):
    """One wrk run: (req/s, p50 ms, p99 ms, non-2xx count, SUT CPU µs per request)."""
    cmd = pinned(LOAD_CPU, ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", lua, url])
    cpu0 = cpu_seconds(pid)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    cpu = cpu_seconds(pid) - cpu0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    cpu_us = cpu * 1e6 / total if pid is not None and total else float("nan")

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, pct(50), pct(99), int(non2xx.group(1)) if non2xx else 0, cpu_us


def fixed_rate(host, port, path, body, rate, seconds, conns=16, headers=None):
    """Open-loop load at a fixed rate over keep-alive connections; latency is measured from
    each request's scheduled send time (no coordinated omission). Returns sorted latencies (ms)."""
    import socket, threading
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items() if k != "Content-Type")
    req = (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n{extra}"
           f"X-Api-Key: {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    total = rate * seconds
    start = time.perf_counter() + 0.2
    lat, lock = [], threading.Lock()
    nxt = [0]

    def worker():
        s = socket.create_connection((host, port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= total:
                break
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            s.sendall(req)
            length, chunked = 0, False
            while True:
                line = f.readline()
                if line in (b"\r\n", b""):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                    chunked = True
            if chunked:
                while True:
                    size = int(f.readline().split(b";")[0], 16)
                    f.read(size + 2)
                    if size == 0:
                        break
            else:
                f.read(length)
            with lock:
                lat.append((time.perf_counter() - due) * 1000)
        s.close()

    threads = [threading.Thread(target=worker) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat.sort()
    return lat


def pct(sorted_ms, p):
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * p / 100))]


def main():
    lua, body_len = body_file()
    env = dict(os.environ, LAP_LOG="warn", LAP_LOG_FORMAT="json", LAP_GATEWAY_SIGNING_KEY=SEED)
    ret = '\'{"status":"ok","service":"upstream","id":12345,"items":[1,2,3],"ts":1700000000}\''
    busy_before = busy_fraction()
    if busy_before > 0.10:
        print(f"WARNING: {busy_before:.0%} of the CPUs were busy before the run; other work skews the figures", flush=True)
    pids = {}
    pids["direct"] = start("upstream", pinned(LOAD_CPU, nginx_conf("up", f"""server {{ listen 127.0.0.1:{PORTS['upstream']} reuseport backlog=4096;
      location / {{ default_type application/json; return 200 {ret}; }}
      location = /mcp {{ default_type application/json; return 200 '{MCP_ANSWER}'; }} }}""")))
    wait_http(f"http://127.0.0.1:{PORTS['upstream']}/")
    targets = {"direct": f"http://127.0.0.1:{PORTS['upstream']}/x"}
    if "pingora" in TARGETS:
        pids["pingora"] = start("pingora", pinned(SUT_CPU, [os.path.join(REL, "pingora-passthrough")]),
              env=dict(env, LISTEN=f"127.0.0.1:{PORTS['pingora']}", UPSTREAM=f"127.0.0.1:{PORTS['upstream']}", THREADS="1"))
        targets["pingora"] = f"http://127.0.0.1:{PORTS['pingora']}/x"
    if "pingora-like" in TARGETS:
        pids["pingora-like"] = start("pingora-like", pinned(SUT_CPU, [os.path.join(REL, "pingora-passthrough")]),
              env=dict(env, LISTEN=f"127.0.0.1:{PORTS['pingora-like']}", UPSTREAM=f"127.0.0.1:{PORTS['upstream']}",
                       THREADS="1", LIKE_GATEWAY="1"))
        targets["pingora-like"] = f"http://127.0.0.1:{PORTS['pingora-like']}/x"
    if "nginx" in TARGETS:
        pids["nginx"] = start("nginx", pinned(SUT_CPU, nginx_conf("px", f"""upstream up {{ server 127.0.0.1:{PORTS['upstream']}; keepalive 1024; }}
          server {{ listen 127.0.0.1:{PORTS['nginx']} reuseport backlog=4096;
            location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""")))
        targets["nginx"] = f"http://127.0.0.1:{PORTS['nginx']}/x"
    binaries = {"gateway": os.path.join(REL, "lap-gateway"), "full": os.path.join(REL, "lap-gateway"),
                "gateway-base": BASELINE_BIN, "full-base": BASELINE_BIN,
                "mcp": os.path.join(REL, "lap-gateway"), "mcp-full": os.path.join(REL, "lap-gateway")}
    seed_file = os.path.join(work, "signer.seed")
    with open(os.open(seed_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(SEED + "\n")
    signer = os.path.join(REL, "lap-signer")
    variants = {
        "full-per": dict(LAP_EVIDENCE_MODE="per_receipt"),
        "full-oneshot": dict(SIGNER_MODE="external", SIGNER_CMD=f"{signer} sign --key-file {seed_file}",
                             SIGNER_TIMEOUT_SECONDS="2"),
        "full-slow": dict(SIGNER_MODE="external", LAP_SIGNER_PROTOCOL="coprocess", SIGNER_TIMEOUT_SECONDS="2",
                          SIGNER_CMD=f"{signer} serve --key-file {seed_file} --delay-ms {SLOW_SIGNER_MS}"),
    }
    extras = {"full-limits": limits_toml("embedded"), "full-redis": limits_toml("redis")}
    tokens = {}
    auth_extras = {}
    for name, alg in (("gateway-jwt-rs256", "RS256"), ("gateway-jwt-eddsa", "EdDSA"),
                      ("gateway-jwt-rs256-nocache", "RS256"), ("gateway-jwt-eddsa-nocache", "EdDSA")):
        if name in TARGETS:
            jwks, tokens[name] = jwt_material(alg)
            os.makedirs(os.path.join(work, name), exist_ok=True)
            open(os.path.join(work, name, "jwks.json"), "w").write(jwks)
            extras[name] = jwt_toml(alg)
            variants[name] = {}
            if name.endswith("-nocache"):
                auth_extras[name] = "jwt_cache_entries = 0"
    certs, xfcc = None, None
    if any(t in TARGETS for t in MTLS_TARGETS):
        certs, xfcc = mtls_material()
        extras["gateway-mtls"] = mtls_toml(certs)
        variants["gateway-mtls"] = {}
    variants["full-limits"] = {}
    if "full-redis" in TARGETS:
        if shutil.which("redis-server"):
            redis_port = free_port()
            start_redis(redis_port)
            variants["full-redis"] = dict(LAP_STATE_REDIS_URL=f"redis://127.0.0.1:{redis_port}/")
        else:
            print("NOTE: redis-server is not installed (tests/bench/run.sh installs it): full-redis skipped", flush=True)
            TARGETS.remove("full-redis")
    for name in variants:
        binaries[name] = os.path.join(REL, "lap-gateway")
    for name, evidence in (("gateway", False), ("full", True), ("gateway-base", False), ("full-base", True),
                           ("mcp", False), ("mcp-full", True), ("full-per", True), ("full-oneshot", True),
                           ("full-slow", True), ("full-limits", True), ("full-redis", True),
                           ("gateway-jwt-rs256", False), ("gateway-jwt-eddsa", False),
                           ("gateway-jwt-rs256-nocache", False), ("gateway-jwt-eddsa-nocache", False),
                           ("gateway-mtls", False)):
        if name in TARGETS or (name == "gateway-mtls" and certs):
            d = gateway_dir(name, PORTS[name], PORTS[name + "_admin"], evidence, extras.get(name, ""),
                            auth_extras.get(name, ""))
            # A signer is not pinned to the SUT core: like a hardware signer, it is another device.
            cmd = [binaries[name], "--config", "gateway.toml"]
            pids[name] = start(name, pinned(SUT_CPU, cmd), env=dict(env, **variants.get(name, {})), cwd=d)
            path = "/mcp/mcp" if name.startswith("mcp") else "/tools/up/x"
            targets[name] = f"http://127.0.0.1:{PORTS[name]}{path}"
    if "mcp-direct" in TARGETS:
        targets["mcp-direct"] = f"http://127.0.0.1:{PORTS['upstream']}/mcp"
    mlua = mcp_lua()
    luas = {name: mlua for name in targets if name.startswith("mcp")}
    luas.update({name: jwt_lua(name, token) for name, token in tokens.items()})
    if certs:
        # The forwarded certificate instead of the API key, on the plain listener.
        xlua = os.path.join(work, "xfcc.lua")
        open(xlua, "w").write(open(os.path.join(work, "post.lua")).read().replace(
            f'wrk.headers["X-Api-Key"] = "{API_KEY}"', f'wrk.headers["X-Client-Cert"] = "{xfcc}"'))
        luas["gateway-xfcc"] = xlua
        targets["gateway-xfcc"] = targets["gateway-mtls"]
        pids["gateway-xfcc"] = pids["gateway-tls-key"] = pids["gateway-mtls"]
        targets["gateway-tls-key"] = targets["gateway-mtls"]
    for name, url in targets.items():
        if name in tokens:
            wait_http(url, {"Authorization": f"Bearer {tokens[name]}"})
        elif name.startswith("mcp"):
            wait_http(url, dict(MCP_HEADERS, **{"X-Api-Key": API_KEY}), data=MCP_CALL.encode())
        else:
            wait_http(url, {"X-Api-Key": API_KEY})
    targets = {k: v for k, v in targets.items() if k in TARGETS}
    pids = {k: p.pid for k, p in pids.items()}

    results = {}
    for conns in CONNS:
        for name, url in targets.items():
            script = luas.get(name, lua)

            def measure(seconds, pid=None):
                if name in ("gateway-mtls", "gateway-tls-key"):
                    return run_tls_load("/tools/up/x", conns, seconds, certs, name == "gateway-mtls", pid)
                return run_wrk(url, conns, script, seconds, pid)
            measure(WARMUP)
            runs = [measure(DURATION, pids.get(name)) for _ in range(ROUNDS)]
            bad = sum(r[3] for r in runs)
            if bad:
                raise RuntimeError(f"{name} answered {bad} non-2xx responses")
            results[(name, conns)] = runs
            med = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[4] for r in runs)
            print(f"  {name:8s} c={conns:<4d} {med:10.0f} req/s {cpu:7.1f} CPU us/req", flush=True)

    labels = {"direct": "(a) upstream direct (nginx return 200)", "pingora": "(b) bare Pingora pass-through",
              "pingora-like": "(b') Pingora pass-through configured like the gateway",
              "nginx": "(c) nginx proxy_pass", "gateway": "(d) lap-gateway auth + policy",
              "full": "(e) lap-gateway full path (+ receipts, durable log)",
              "gateway-base": "(d') baseline binary, auth + policy", "full-base": "(e') baseline binary, full path",
              "mcp-direct": "(f) MCP upstream direct (nginx, fixed answer)",
              "mcp": "(g) lap-gateway MCP tools/call, auth + policy",
              "mcp-full": "(h) lap-gateway MCP tools/call, full path",
              "full-per": "(e2) full path, per-receipt mode (one DSSE signature per receipt)",
              "full-oneshot": "(e3) full path, one-shot external signer (one process per signature)",
              "full-slow": f"(e4) full path, external co-process signer taking {SLOW_SIGNER_MS} ms per signature",
              "full-limits": "(e5) full path + a rate limit and a daily call budget, embedded state store",
              "full-redis": f"(e6) full path + the same limits in Redis (appendfsync {REDIS_APPENDFSYNC}, load CPU)",
              "gateway-jwt-rs256": "(d2) lap-gateway auth + policy, bearer JWT RS256 (jwks_file, token cache)",
              "gateway-jwt-eddsa": "(d3) lap-gateway auth + policy, bearer JWT EdDSA (jwks_file, token cache)",
              "gateway-jwt-rs256-nocache": "(d4) lap-gateway auth + policy, bearer JWT RS256, no token cache (a signature check per call)",
              "gateway-jwt-eddsa-nocache": "(d5) lap-gateway auth + policy, bearer JWT EdDSA, no token cache (a signature check per call)",
              "gateway-mtls": "(d6) lap-gateway auth + policy over TLS, SPIFFE client certificate (tls-load)",
              "gateway-tls-key": "(d7) lap-gateway auth + policy over TLS, API key, no client certificate (tls-load)",
              "gateway-xfcc": "(d8) lap-gateway auth + policy, client certificate forwarded by a trusted proxy (X-Client-Cert, wrk)"}
    lines = [f"Body: {body_len}-byte JSON POST, keep-alive; SUT on CPU {SUT_CPU} (1 worker), wrk + upstream on CPU {LOAD_CPU}; "
             f"{ROUNDS} x {DURATION}s after {WARMUP}s warm-up; median (min-max). "
             "CPU us/req: CPU time of the measured process (all threads, nginx workers included) per request "
             "(for (a), the upstream on the load CPU).", "",
             "| target | conns | req/s | p50 ms | p99 ms | CPU us/req |", "|---|---|---|---|---|---|"]
    med, cpu_med = {}, {}
    for (name, conns), runs in results.items():
        rps = [r[0] for r in runs]
        med[(name, conns)] = statistics.median(rps)
        cpu_med[(name, conns)] = statistics.median(r[4] for r in runs)
        lines.append(f"| {labels[name]} | {conns} | {statistics.median(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) | "
                     f"{statistics.median(r[1] for r in runs):.2f} | {statistics.median(r[2] for r in runs):.2f} | "
                     f"{cpu_med[(name, conns)]:.1f} |")
    lines += ["", "Ratios of median req/s, and (in brackets) the inverse ratio of CPU us/req, which other load on "
              "the machine disturbs less:", "",
              "| ratio | " + " | ".join(f"c={c}" for c in CONNS) + " |", "|---|" + "---|" * len(CONNS)]
    for a, b in (("gateway", "pingora"), ("full", "pingora"), ("gateway", "nginx"), ("full", "nginx"), ("pingora", "nginx"),
                 ("gateway-base", "pingora"), ("full-base", "pingora"), ("gateway", "gateway-base"), ("full", "full-base"),
                 ("mcp", "pingora"), ("mcp-full", "pingora"), ("mcp", "gateway"), ("mcp-full", "full"),
                 ("gateway", "pingora-like"), ("pingora-like", "pingora"), ("full-per", "pingora"),
                 ("full", "full-per"), ("full-oneshot", "pingora"), ("full-slow", "pingora"),
                 ("full-limits", "full"), ("full-redis", "full"),
                 ("gateway-jwt-rs256", "gateway"), ("gateway-jwt-eddsa", "gateway"),
                 ("gateway-jwt-rs256-nocache", "gateway"), ("gateway-jwt-eddsa-nocache", "gateway"),
                 ("gateway-jwt-rs256", "pingora"), ("gateway-jwt-eddsa", "pingora"),
                 ("gateway-xfcc", "gateway"), ("gateway-mtls", "gateway-tls-key")):
        if all((a, c) in med and (b, c) in med for c in CONNS):
            lines.append(f"| {a} / {b} | " + " | ".join(
                f"{med[(a, c)] / med[(b, c)]:.2f} ({cpu_med[(b, c)] / cpu_med[(a, c)]:.2f})" for c in CONNS) + " |")
    # Added latency at a fixed moderate rate, open loop: the difference to the upstream direct.
    body = open(os.path.join(work, "body.json"), "rb").read()
    fr = {}
    paths = {"direct": (PORTS["upstream"], "/x"), "pingora": (PORTS["pingora"], "/x"),
             "pingora-like": (PORTS["pingora-like"], "/x"),
             "nginx": (PORTS["nginx"], "/x"), "gateway": (PORTS["gateway"], "/tools/up/x"),
             "full": (PORTS["full"], "/tools/up/x"), "gateway-base": (PORTS["gateway-base"], "/tools/up/x"),
             "full-base": (PORTS["full-base"], "/tools/up/x"), "mcp-direct": (PORTS["upstream"], "/mcp"),
             "mcp": (PORTS["mcp"], "/mcp/mcp"), "mcp-full": (PORTS["mcp-full"], "/mcp/mcp")}
    for name in ("full-per", "full-oneshot", "full-slow", "full-limits", "full-redis"):
        paths[name] = (PORTS[name], "/tools/up/x")
    fr_all = {}
    for rate in RATES:
        fr = {}
        for name in ["direct"] + [t for t in TARGETS if t != "direct"]:
            if name in paths and (name == "direct" or name in targets):
                port, path = paths[name]
                b, h = (MCP_CALL.encode(), MCP_HEADERS) if name.startswith("mcp") else (body, {})
                # Enough connections that one request at a time on each keeps up with the rate
                # even at ~15 ms a call (a durable evidence path waits for fsyncs).
                conns = max(16, rate // 50)
                fixed_rate("127.0.0.1", port, path, b, rate, 1, conns=conns, headers=h)
                fr[name] = fixed_rate("127.0.0.1", port, path, b, rate, 5, conns=conns, headers=h)
                print(f"  fixed {rate}/s {name:8s} p50 {pct(fr[name], 50):.3f} ms p99 {pct(fr[name], 99):.3f} ms", flush=True)
        fr_all[rate] = fr
        if "direct" in fr:
            lines += ["", f"Fixed rate {rate} req/s, 5 s, {max(16, rate // 50)} keep-alive connections, open loop (latency from the scheduled send time):", "",
                      "| target | p50 ms | p99 ms | added p50 ms | added p99 ms |", "|---|---|---|---|---|"]
            d50, d99 = pct(fr["direct"], 50), pct(fr["direct"], 99)
            for name, l in fr.items():
                lines.append(f"| {labels[name]} | {pct(l, 50):.3f} | {pct(l, 99):.3f} | {pct(l, 50) - d50:+.3f} | {pct(l, 99) - d99:+.3f} |")

    # External signer throughput (every signature verified against the pinned key).
    tool = os.path.join(REL, "signer-throughput")
    if os.path.exists(tool):
        out = subprocess.run([tool, os.path.join(REL, "lap-signer"), str(SIGNATURES), "512"],
                             capture_output=True, text=True, timeout=600)
        lines += ["", "External signers (unpinned, both cores; each signature verified):", ""]
        lines += ["    " + l for l in out.stdout.strip().splitlines()]
        print(out.stdout, out.stderr, flush=True)

    busy_after = busy_fraction()
    meta = machine()
    meta.update(date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), rounds=ROUNDS, duration_s=DURATION, warmup_s=WARMUP,
                body_bytes=body_len, busy_before=round(busy_before, 3), busy_after=round(busy_after, 3))
    head = [f"{meta['date']}; {meta['cpus']} CPUs ({meta['cpu_model']}), {meta['kernel']}; "
            f"CPUs busy before/after the run (other work): {busy_before:.0%}/{busy_after:.0%}.", ""]
    report = "\n".join(head + lines)
    print("\n" + report)
    out_dir = os.path.join(ROOT, "tests", "bench", "results")
    os.makedirs(out_dir, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(out_dir, f"bench-{stamp}.md"), "w") as f:
        f.write(report + "\n")
    keys = ("rps", "p50_ms", "p99_ms", "non2xx", "cpu_us_per_req")
    with open(os.path.join(out_dir, f"bench-{stamp}.json"), "w") as f:
        json.dump({"meta": meta,
                   "closed_loop": [{"target": n, "conns": c, "runs": [dict(zip(keys, r)) for r in runs]}
                                   for (n, c), runs in results.items()],
                   "fixed_rate": [{"target": n, "rate": rate, "p50_ms": pct(l, 50), "p99_ms": pct(l, 99), "samples": len(l)}
                                  for rate, fr in fr_all.items() for n, l in fr.items()]}, f, indent=1)
    print(f"results: tests/bench/results/bench-{stamp}.md (.json)")


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)  # runs the finally block below


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    try:
        main()
    finally:
        for p in procs:
            try:
                p.send_signal(signal.SIGINT if p.args and "nginx" not in " ".join(p.args) else signal.SIGTERM)
            except Exception:
                pass
        for p in procs:
            try:
                p.wait(timeout=5)
            except Exception:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
