"""
bench/harness_throughput.py: can the harness keep a vLLM server busy? eval.py's episode runner
(threads against an OpenAI-compatible server, the path a vLLM run takes) with N workers against a
stub server that answers every call at once with a valid op (LOG: <|DONE|>, PLAN: an <|ACTION|>
with a valid action name). What is left is the harness: prompts, op parsing, memory, env steps,
traces, HTTP. Each of the N workers plays one episode; reported per N: env steps/s and LLM calls/s
in the steady state (the middle half of the calls by arrival time at the stub: env resets at the
start and the last episodes ending are left out, as they are in a 2,000-step episode), and the
run's seconds with its resets. The stub runs in its own process.

    python bench/harness_throughput.py                         # N = 1 2 4 8 16 32 64, Crafter
    python bench/harness_throughput.py --workers 1 8 --env minihack --steps 80
    python bench/harness_throughput.py --serve 8123            # only the stub, for your own runs

Writes bench/results/harness_throughput.json.
"""
import argparse
import json
import multiprocessing
import sys
import os
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ACTION = {"crafter": "Noop", "minihack": "north", "nethack": "search"}  # a valid action of each env
TASK = {"crafter": "default", "minihack": "MiniHack-MazeWalk-9x9-v0", "nethack": "NetHackChallenge-v0"}


class Stub(ThreadingHTTPServer):
    """An OpenAI-compatible server on 127.0.0.1 that answers at once: GET /v1/models lists `model`; a chat
    completion gets <|DONE|> when its last message offers <|DONE|> (a LOG prompt), else <|ACTION|>action<|END|>.
    `requests` counts the chat completions per requested model name, `times` holds their arrival times
    (GET /v1/stats returns them). stub.url is the base URL to pass."""
    daemon_threads = True

    def __init__(self, action, model="stub", port=0):
        super().__init__(("127.0.0.1", port), StubHandler)
        self.action, self.model, self.requests, self.times, self.lock = action, model, {}, [], threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"


class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server
    disable_nagle_algorithm = True  # each write leaves at once (else the body waits ~40 ms for the ACK of the headers)

    def log_message(self, *args):
        pass

    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.endswith("/stats"):
            self.reply({"times": self.server.times})
        else:
            self.reply({"object": "list", "data": [{"id": self.server.model, "object": "model", "owned_by": "stub"}]})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = request.get("model")
        with self.server.lock:
            self.server.requests[model] = self.server.requests.get(model, 0) + 1
            self.server.times.append(time.time())
        last = request["messages"][-1]["content"]
        text = "<|DONE|>" if "<|DONE|>" in last else f"<|ACTION|>{self.server.action}<|END|>"
        prompt = sum(len(m["content"].split()) for m in request["messages"])
        self.reply({"id": "stub", "object": "chat.completion", "created": 0, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": 3, "total_tokens": prompt + 3}})


def serve(action, port, ready=None):
    stub = Stub(action, port=port)
    if ready is not None:
        ready.put(stub.url)
    stub.serve_forever()


def run(url, env, workers, steps, folder):
    """One eval.py run, one episode per worker thread; returns (env steps, LLM calls, steady calls/s, seconds)."""
    import eval as evaluation
    import metrics
    import run_folder
    import trace_format
    seeds = Path(folder) / "seeds.txt"
    seeds.write_text(f"{env}: {' '.join(map(str, range(workers)))}\n")
    args = evaluation.parse_args(["--env", env, "--task", TASK[env], "--backend", "openai", "--base-url", url,
                                  "--model", "stub", "--workers", str(workers), "--max-steps", str(steps),
                                  "--seeds", str(seeds), "--runs-dir", str(folder), "--run-name", f"n{workers}"])
    config = evaluation.make_config(args)
    run_dir, lock = run_folder.prepare_run_dir(config, folder)
    evaluation.load_models(config)
    t0, start = time.perf_counter(), time.time()
    ends = [end for _, end in evaluation.outcomes(config, run_dir, config["jobs"], server=True)]
    seconds = time.perf_counter() - t0
    os.close(lock)
    failed = [e for e in ends if isinstance(e, Exception)]
    if failed:
        raise SystemExit(f"error: {len(failed)} episode(s) failed: {failed[0]}")
    traces = [trace_format.read_trace(run_folder.trace_path(run_dir, j)) for j in config["jobs"]]
    calls = sum(1 for _, trace_steps, _ in traces for _ in metrics.calls(trace_steps))
    times = sorted(t for t in json.load(urllib.request.urlopen(url + "/stats"))["times"] if t >= start)
    middle = times[len(times) // 4:3 * len(times) // 4]
    return sum(end["steps"] for end in ends), calls, (len(middle) - 1) / (middle[-1] - middle[0]), seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--env", default="crafter", choices=list(TASK))
    p.add_argument("--steps", type=int, default=40, help="steps per episode")
    p.add_argument("--serve", type=int, metavar="PORT", help="only run the stub on this port (Ctrl-C ends it)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "harness_throughput.json"))
    args = p.parse_args()
    if args.serve is not None:
        print(f"stub at http://127.0.0.1:{args.serve}/v1 (model 'stub', action {ACTION[args.env]!r})")
        serve(ACTION[args.env], args.serve)
        return
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Queue()
    stub = spawn.Process(target=serve, args=(ACTION[args.env], 0, ready), daemon=True)
    stub.start()
    url = ready.get(timeout=60)
    rows = []
    try:
        for n in args.workers:
            with tempfile.TemporaryDirectory() as folder:
                steps, calls, calls_per_s, seconds = run(url, args.env, n, args.steps, folder)
            rows.append({"workers": n, "steps": steps, "calls": calls, "seconds": round(seconds, 1),
                         "steps_per_s": round(calls_per_s * steps / calls, 1), "calls_per_s": round(calls_per_s, 1)})
            print(f"N={n}: {rows[-1]['steps_per_s']} steps/s, {rows[-1]['calls_per_s']} calls/s", file=sys.stderr)
    finally:
        stub.terminate()
    print(f"\n{args.env}, one episode of {args.steps} steps per worker\n")
    print("| workers | env steps/s | LLM calls/s | seconds (with env resets) |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['workers']} | {r['steps_per_s']} | {r['calls_per_s']} | {r['seconds']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"env": args.env, "steps_per_episode": args.steps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
