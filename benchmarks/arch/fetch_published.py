"""Copy the published ARCH-COMP AINNCS controllers (ACC and TORA, ONNX) out of a local copy of
the benchmark repository into benchmarks/arch/published/ (git-ignored: the files carry no
licence, so this project never ships or commits them).

    python benchmarks/arch/fetch_published.py SOURCE [--rev REV] [--out DIR]

SOURCE is a checkout of the benchmark repository (e.g. ARCH-COMP2024) or a bare git directory
of one (a mirror: the files are read with `git show REV:path`, REV default HEAD).  Every
`*.onnx` under a `benchmarks/` folder whose name has the word ACC or TORA (any case:
`ACC`, `Benchmark9-Tora`, `Tora_Heterogeneous`) is copied to
OUT/<folder>/<file>, and OUT/MANIFEST.json records where each came from: the source, the
commit, the path and the SHA-256 — docs/results.md cites that commit.  Each file is read back
with scpo's own ONNX reader and its layers printed, so a file the reader refuses shows here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("acc", "tora")  # words of a folder's name under benchmarks/ ("Benchmark9-Tora")
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def _git(git_dir: Path, *args: str) -> bytes:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True,
                          capture_output=True).stdout


def _wanted(path: str) -> bool:
    parts = path.split("/")
    if not path.lower().endswith(".onnx") or "benchmarks" not in parts:
        return False
    folder = parts[parts.index("benchmarks") + 1] if parts.index("benchmarks") + 1 < len(parts) \
        else ""
    return any(token in BENCHMARKS for token in re.split(r"[^a-z0-9]+", folder.lower()))


def _listing(source: Path, rev: str) -> tuple[str | None, dict[str, callable]]:
    """(commit, {path: read()}) of the source's wanted files."""
    bare = (source / "HEAD").is_file() and (source / "objects").is_dir()
    if bare or (source / ".git").exists():
        git_dir = source if bare else source / ".git"
        commit = _git(git_dir, "rev-parse", rev).decode().strip()
        names = _git(git_dir, "ls-tree", "-r", "--name-only", commit).decode().splitlines()
        return commit, {p: (lambda p=p: _git(git_dir, "show", f"{commit}:{p}"))
                        for p in names if _wanted(p)}
    files = {str(p.relative_to(source)): p for p in source.rglob("*.onnx")}
    return None, {k: (lambda p=p: p.read_bytes()) for k, p in files.items() if _wanted(k)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a checkout or bare git dir of the repository")
    parser.add_argument("--rev", default="HEAD", help="the commit to read (git sources)")
    parser.add_argument("--out", type=Path, default=HERE / "published")
    args = parser.parse_args(argv)
    if not args.source.exists():
        print(f"{args.source}: no such directory", file=sys.stderr)
        return 2
    try:
        commit, files = _listing(args.source, args.rev)
    except subprocess.CalledProcessError as e:
        print(f"{args.source}: git failed: {e.stderr.decode(errors='replace').strip()}",
              file=sys.stderr)
        return 2
    if not files:
        print(f"{args.source}: no ACC/TORA ONNX files under benchmarks/", file=sys.stderr)
        return 1
    from scpo_spec.policies.onnx_graph import OnnxFileError, read_onnx
    manifest = {"source": str(args.source), "commit": commit, "files": []}
    for path, read in sorted(files.items()):
        data = read()
        parts = path.split("/")
        target = args.out / parts[parts.index("benchmarks") + 1] / parts[-1]
        entry = {"path": path, "copied_to": str(target.relative_to(args.out)),
                 "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        if data.startswith(LFS_POINTER):
            entry["error"] = "a Git LFS pointer, not the file (fetch the LFS object)"
            print(f"{path}: {entry['error']}")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            try:
                net = read_onnx(data, "controller", parts[-1])
                entry["layers"] = net.shapes
                entry["activations"] = net.activations
                print(f"{path}: {len(net.layers)} layers {net.shapes}, {net.activations}")
            except OnnxFileError as e:
                entry["error"] = e.message
                print(f"{path}: copied; scpo refuses it: {e.message}")
        manifest["files"].append(entry)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n",
                                            encoding="utf-8")
    print(f"{len(manifest['files'])} files → {args.out} (commit {commit or 'n/a: not git'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
