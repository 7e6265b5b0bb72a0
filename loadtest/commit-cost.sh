#!/usr/bin/env bash
# Redis's own time per ticker transition commit, measured apart from everything else:
#   1. runs a small burst drain (`loadtest ticker`, private servers) and captures, with
#      MONITOR, the ticker's batched `commit.lua` calls (fenced, several commits each);
#   2. replays the largest of them, unchanged but for its namespace (a fresh one per replay,
#      with the fence and the revisions the commits expect set first), on a private
#      `redis-server`, pipelined, and reads `INFO commandstats`: µs of `EVALSHA` per call,
#      divided by the commits in it;
#   3. replays the ticker benchmark's baseline the same way (`EVALSHA` of a one-`HSET` script
#      with a rollout-record-sized value, 32 to a pipeline) and prints both in Redis's own
#      accounting and in the server's CPU time (`/proc`, networking and parsing included):
#      how many bare calls one transition commit costs Redis, i.e. the drain ratio Redis
#      alone allows even with an infinitely fast ticker.
# Steadier than the drain rate, which the machine's other load moves: one Redis thread,
# nothing else on it.
#   loadtest/commit-cost.sh [replays]     # uses <target>/release/loadtest (build it first)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
LOADTEST="$TARGET/release/loadtest"
REPLAYS="${1:-600}"
[ -x "$LOADTEST" ] || { echo "commit-cost.sh: build it first: cargo build --release -p loadtest" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "commit-cost.sh: redis-server missing (deploy/tools/install.sh)" >&2; exit 1; }
WORK="$(mktemp -d)"
BENCH_PID=""
cleanup() {
    [ -n "$BENCH_PID" ] && redis-cli -p "$BENCH_PORT" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# 1. capture: the burst is due 4 s + 0.3 ms per rollout after seeding starts
"$LOADTEST" ticker --rollouts 100 --spread 1s --burst 3000 --script-duration 1s >"$WORK/run.log" 2>&1 &
RUN=$!
REDIS=""
for _ in $(seq 1 100); do
    REDIS="$(pgrep -P "$RUN" -f redis-server | head -1 || true)"
    [ -n "$REDIS" ] && break
    sleep 0.1
done
[ -n "$REDIS" ] || { echo "commit-cost.sh: the drain's redis did not start" >&2; cat "$WORK/run.log" >&2; exit 1; }
PORT="$(tr '\0' ' ' <"/proc/$REDIS/cmdline" | grep -o ':[0-9]*' | head -1 | tr -d :)"
timeout 12 redis-cli -p "$PORT" MONITOR >"$WORK/monitor.txt" || true
wait "$RUN" || { echo "commit-cost.sh: the drain failed" >&2; cat "$WORK/run.log" >&2; exit 1; }

# 2. replay
BENCH_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
redis-server --port "$BENCH_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --dir "$WORK" --logfile "$WORK/redis.log" >/dev/null
BENCH_PID=1
for _ in $(seq 1 50); do redis-cli -p "$BENCH_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

python3 - "$WORK/monitor.txt" "$ROOT/shared/rollout-store/src/scripts/commit.lua" "$BENCH_PORT" "$REPLAYS" <<'PY'
import os, re, socket, sys

monitor, script_path, port, replays = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ESCAPES = {'n': b'\n', 'r': b'\r', 't': b'\t', 'a': b'\x07', 'b': b'\x08', '"': b'"', '\\': b'\\'}

def parse(line):
    """The arguments of a MONITOR line, unescaped."""
    args = []
    for match in re.finditer(r'"((?:[^"\\]|\\.)*)"', line[line.index('"'):]):
        text, out, i = match.group(1), bytearray(), 0
        while i < len(text):
            if text[i] == '\\' and text[i + 1] == 'x':
                out.append(int(text[i + 2:i + 4], 16)); i += 4
            elif text[i] == '\\':
                out += ESCAPES[text[i + 1]]; i += 2
            else:
                out += text[i].encode('latin1'); i += 1
        args.append(bytes(out))
    return args

class Redis:
    def __init__(self, port):
        self.sock = socket.create_connection(('127.0.0.1', port)); self.buf = b''
    def send(self, commands):
        out = []
        for args in commands:
            out.append(b'*%d\r\n' % len(args))
            for arg in args:
                arg = arg if isinstance(arg, bytes) else str(arg).encode()
                out.append(b'$%d\r\n%s\r\n' % (len(arg), arg))
        self.sock.sendall(b''.join(out))
    def line(self):
        while b'\r\n' not in self.buf:
            self.buf += self.sock.recv(1 << 20)
        line, self.buf = self.buf.split(b'\r\n', 1); return line
    def read(self):
        line = self.line(); kind = line[:1]
        if kind == b'-':
            raise RuntimeError(line.decode())
        if kind in (b'+', b':'):
            return line[1:]
        if kind == b'$':
            n = int(line[1:])
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(1 << 20)
            value, self.buf = self.buf[:n], self.buf[n + 2:]; return value
        return [self.read() for _ in range(max(int(line[1:]), 0))]
    def call(self, *args):
        self.send([args]); return self.read()

script = open(script_path).read()
calls = []
for line in open(monitor, errors='replace'):
    if '"EVALSHA"' not in line.upper() and '"evalsha"' not in line:
        continue
    args = parse(line)
    if len(args) < 4:
        continue
    keys = args[3:3 + int(args[2])]
    argv = args[3 + int(args[2]):]
    if any(key.endswith(b':fence') for key in keys) and len(argv) > 3 and argv[0].isdigit():
        calls.append((keys, argv))
if not calls:
    sys.exit('commit-cost.sh: no batched commit call captured')
keys, argv = max(calls, key=lambda call: int(call[1][0]))
commits = int(argv[0])
tag = re.search(rb'\{[^}]*\}', keys[0]).group(0)
# what each replay must find: the fence at the writer's epoch, each checked revision
setup, kbase, abase = [], 0, 1
for _ in range(commits):
    key_count, arg_count = int(argv[abase]), int(argv[abase + 1])
    own = argv[abase + 2:abase + 2 + arg_count]
    if int(own[3]) > 0:
        setup.append((b'SET', keys[kbase + int(own[3]) - 1], own[4]))
    for check in range(int(own[6])):
        index, revision = int(own[7 + 2 * check]), own[8 + 2 * check]
        setup.append((b'HSET', keys[kbase + int(index) - 1], b'rev', revision))
    kbase += key_count
    abase += 2 + arg_count

def evalsha_usec():
    stats = redis.call('INFO', 'commandstats').decode()
    line = next(l for l in stats.split('\r\n') if l.startswith('cmdstat_evalsha:'))
    return float(re.search(r'usec_per_call=([0-9.]+)', line).group(1))

def cpu_seconds():
    with open(f'/proc/{pid}/stat') as stat:
        fields = stat.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')

redis = Redis(port)
sha = redis.call('SCRIPT', 'LOAD', script)
BATCH = 32
for start in range(0, replays, BATCH):
    tags = [b'{replay-%d}' % n for n in range(start, min(start + BATCH, replays))]
    redis.send([[part.replace(tag, t) for part in command] for t in tags for command in setup])
    for _ in range(len(tags) * len(setup)):
        redis.read()
redis.call('CONFIG', 'RESETSTAT')
pid = int(re.search(rb'process_id:(\d+)', redis.call('INFO', 'server')).group(1))
cpu_before = cpu_seconds()
for start in range(0, replays, BATCH):
    tags = [b'{replay-%d}' % n for n in range(start, min(start + BATCH, replays))]
    redis.send([[b'EVALSHA', sha, str(len(keys)).encode()] + [key.replace(tag, t) for key in keys] + argv
                for t in tags])
    replies = [redis.read() for _ in tags]
    refused = [reply for outcome in replies for reply in outcome if reply[0] != b'ok']
    if refused:
        sys.exit(f'commit-cost.sh: a replayed commit was refused: {refused[0]}')
usec = evalsha_usec()
cpu_commits = cpu_seconds() - cpu_before
size = sum(len(part) for part in keys + argv)
print(f'commit.lua: {usec / commits:.1f} us of Redis per transition commit '
      f'({usec:.0f} us per call of {commits} commits, {size} bytes of keys and arguments; '
      f'{replays} calls replayed)')

# the ticker benchmark's baseline, the same way: a one-HSET script, a record-sized value
payload = max((part for part in argv if len(part) < 4096), key=len)
bare = redis.call('SCRIPT', 'LOAD', "redis.call('HSET', KEYS[1], 'rev', ARGV[1], 'data', ARGV[2]) return 1")
BARE_CALLS = 200 * BATCH * 10
redis.call('CONFIG', 'RESETSTAT')
cpu_before = cpu_seconds()
for start in range(0, BARE_CALLS, BATCH):
    redis.send([[b'EVALSHA', bare, b'1', b'{bare}:r%d' % (n % 1000), b'7', payload]
                for n in range(start, start + BATCH)])
    for _ in range(BATCH):
        redis.read()
cpu_bare = cpu_seconds() - cpu_before
bare_usec = evalsha_usec()
per_commit_cpu = cpu_commits * 1e6 / (replays * commits)
per_bare_cpu = cpu_bare * 1e6 / BARE_CALLS
print(f'bare script (one HSET of {len(payload)} bytes): {bare_usec:.1f} us of Redis per call')
print(f'server CPU (networking included): {per_commit_cpu:.1f} us per transition commit, '
      f'{per_bare_cpu:.1f} us per bare call: a commit costs Redis {per_commit_cpu / per_bare_cpu:.1f} '
      f'bare calls, so Redis alone holds the drain below {per_bare_cpu / per_commit_cpu:.2f}x '
      f'the bare script rate (before the record reads, the due-index moves and the outbox trim)')
PY
