#!/usr/bin/env python
"""How fluid `scpo lsp` stays on a 300-line spec (docs/editor.md).

    python benchmarks/bench_lsp.py [--lines 300] [--repeat 7]

The spec is specs/double_integrator.scpo grown to --lines with constants and constraints that
use them.  It prints: the language check (what runs DEBOUNCE s after the last keystroke) and the
plain parse (what definition/outline/completion re-read when the check is behind), best and
median of --repeat; then, through a real server over pipes, the time from the last of a burst
of edits to its diagnostics, and hover/completion round trips made while typing.  It only
measures: nothing is asserted on a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from scpo_spec.language.load import check_text, parse_model
from scpo_spec.lsp.server import DEBOUNCE

ROOT = Path(__file__).resolve().parents[1]


def big_spec(lines: int) -> str:
    base = (ROOT / "specs" / "double_integrator.scpo").read_text().rstrip("\n").split("\n")
    extra, i = [], 0
    while len(base) + len(extra) < lines:
        extra.append(f"const c{i} = {i} * 0.01 + dt" if i % 2 == 0 else
                     f"constraint p{i}: always abs(position) <= 1.5 + c{i - 1}  smoothness 50")
        i += 1
    return "\n".join(base + extra) + "\n"


def timed(f, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


class Pipe:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "scpo_spec.cli", "lsp"], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.messages, self.cv, self.n = [], threading.Condition(), 0
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        while True:
            length = None
            while (line := self.proc.stdout.readline()).strip():
                if line.lower().startswith(b"content-length"):
                    length = int(line.split(b":")[1])
            if length is None:
                return
            with self.cv:
                self.messages.append((time.perf_counter(), json.loads(self.proc.stdout.read(length))))
                self.cv.notify_all()

    def send(self, **message):
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def wait(self, test):
        with self.cv:
            self.cv.wait_for(lambda: any(test(m) for _, m in self.messages), 60)
            at, found = next((t, m) for t, m in self.messages if test(m))
            self.messages.remove((at, found))
            return at, found

    def request(self, method, params):
        self.n += 1
        ident = self.n
        start = time.perf_counter()
        self.send(id=ident, method=method, params=params)
        at, answer = self.wait(lambda m: m.get("id") == ident and "method" not in m)
        return at - start, answer.get("result")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    text = big_spec(args.lines)
    path = "/tmp/bench_lsp.scpo"
    assert check_text(text, path=path).ok
    print(f"spec: {text.count(chr(10))} lines, {len(text)} characters")
    check_text(text, path=path)  # warm: the parser is built once per process
    for name, f in (("check_text (the debounced check)", lambda: check_text(text, path=path)),
                    ("parse_model (no checks)", lambda: parse_model(text, path=path))):
        best, median = timed(f, args.repeat)
        print(f"{name:36s} best {best * 1e3:6.1f} ms   median {median * 1e3:6.1f} ms")

    lsp = Pipe()
    lsp.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
    lsp.send(method="initialized", params={})
    uri = Path(path).as_uri()
    start = time.perf_counter()
    lsp.send(method="textDocument/didOpen", params={"textDocument": {
        "uri": uri, "languageId": "scpo", "version": 1, "text": text}})
    at, _ = lsp.wait(lambda m: m.get("method") == "textDocument/publishDiagnostics")
    print(f"didOpen → diagnostics                 {(at - start) * 1e3:6.1f} ms")
    line = text.split("\n").index("    horizon 60")
    hovers, completions, delays = [], [], []
    for version in range(2, 2 + args.repeat):
        for k in range(5):  # a burst of five keystrokes, 30 ms apart
            lsp.send(method="textDocument/didChange", params={
                "textDocument": {"uri": uri, "version": version * 10 + k},
                "contentChanges": [{"text": text.replace("horizon 60", f"horizon 6{k}")}]})
            last = time.perf_counter()
            time.sleep(0.03)
        hovers.append(lsp.request("textDocument/hover", {"textDocument": {"uri": uri},
                                                          "position": {"line": 38,
                                                                       "character": 13}})[0])
        completions.append(lsp.request("textDocument/completion", {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": 4}})[0])
        at, note = lsp.wait(lambda m: m.get("method") == "textDocument/publishDiagnostics")
        assert note["params"]["version"] == version * 10 + 4, note["params"]["version"]
        delays.append(at - last)
    print(f"last keystroke → diagnostics          median {statistics.median(delays) * 1e3:6.1f} ms"
          f"   (debounce {DEBOUNCE * 1e3:.0f} ms + the check; only the last version published)")
    print(f"hover while typing                    median {statistics.median(hovers) * 1e3:6.1f} ms")
    print(f"completion while typing               median "
          f"{statistics.median(completions) * 1e3:6.1f} ms")
    lsp.request("shutdown", None)
    lsp.send(method="exit", params=None)
    lsp.proc.wait(10)


if __name__ == "__main__":
    main()
