"""The editors as users meet them: headless Neovim (Debian's `neovim`, a client nobody here
wrote) driving `scpo lsp`, and the VS Code extension packaged as the `.vsix` users install.
Each skips with its reason where its tool is missing (`.ci/run` installs Neovim; node is not
needed for CI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from scpo_spec.language.load import check_text

ROOT = Path(__file__).resolve().parents[2]
SPEC = (ROOT / "specs" / "double_integrator.scpo").read_text()
NVIM = shutil.which("nvim")
NPM = shutil.which("npm")

# Neovim 0.7 (Debian 12) has vim.lsp.start_client/buf_attach_client, not vim.lsp.start, and
# vim.lsp.buf.formatting_sync, not vim.lsp.buf.format: both are used where they exist.  Every
# wait has a timeout; whatever happens, the observations are written and Neovim quits.
NVIM_INIT = r"""
local plan = vim.fn.json_decode(table.concat(vim.fn.readfile(os.getenv('SCPO_NVIM_PLAN')), '\n'))
local seen = {}

local function diagnostics(buf)
  local out = {}
  for _, d in ipairs(vim.diagnostic.get(buf)) do
    table.insert(out, {line = d.lnum, col = d.col, end_line = d.end_lnum, end_col = d.end_col,
                       message = d.message, severity = d.severity})
  end
  return out
end

local function drive()
  local v = vim.version()
  seen.nvim = v.major .. '.' .. v.minor .. '.' .. v.patch
  vim.cmd('edit ' .. vim.fn.fnameescape(plan.spec))
  local buf = vim.api.nvim_get_current_buf()
  local id = vim.lsp.start_client({name = 'scpo', cmd = plan.cmd, cmd_cwd = plan.cwd,
                                   root_dir = plan.root})
  vim.lsp.buf_attach_client(buf, id)

  seen.opened_in_time = vim.wait(30000, function() return #vim.diagnostic.get(buf) > 0 end, 20)
  seen.opened = diagnostics(buf)

  local fix = plan.fix
  vim.api.nvim_buf_set_text(buf, fix.line, fix.start, fix.line, fix.stop, {fix.text})
  seen.cleared_in_time = vim.wait(20000, function() return #vim.diagnostic.get(buf) == 0 end, 20)
  seen.after_fix = diagnostics(buf)

  vim.api.nvim_win_set_cursor(0, {plan.hover.line + 1, plan.hover.character})
  local answers = vim.lsp.buf_request_sync(buf, 'textDocument/hover',
                                           vim.lsp.util.make_position_params(), 10000)
  local answer = answers and answers[id]
  seen.hover = answer and answer.result and answer.result.contents

  vim.api.nvim_win_set_cursor(0, {plan.use.line + 1, plan.use.character})
  vim.lsp.buf.definition()
  seen.jumped_in_time = vim.wait(10000, function()
    return vim.api.nvim_win_get_cursor(0)[1] ~= plan.use.line + 1 end, 20)
  seen.definition = vim.api.nvim_win_get_cursor(0)

  if vim.lsp.buf.format then
    vim.lsp.buf.format({timeout_ms = 10000})
  else
    vim.lsp.buf.formatting_sync(nil, 10000)
  end
  seen.formatted = vim.api.nvim_buf_get_lines(buf, 0, -1, false)
  vim.lsp.stop_client(id)
end

vim.api.nvim_create_autocmd('VimEnter', {once = true, callback = function()
  local ok, err = xpcall(drive, debug.traceback)
  if not ok then seen.error = err end
  vim.fn.writefile({vim.fn.json_encode(seen)}, plan.out)
  vim.cmd('qall!')
end})
"""


def at(text: str, needle: str, offset: int = 0) -> dict:
    """The 0-based (line, character) of `needle` in `text`, plus `offset` characters."""
    index = text.index(needle) + offset
    line = text.count("\n", 0, index)
    return {"line": line, "character": index - (text.rfind("\n", 0, index) + 1)}


@pytest.mark.skipif(NVIM is None, reason="nvim is not installed (Debian: apt-get install neovim; "
                    ".ci/run installs it)")
def test_headless_neovim_as_the_lsp_client(tmp_path):
    """Diagnostics on open and after the fix, hover, go to definition and formatting, as
    Neovim's own LSP client asks for them and applies them."""
    messy = SPEC.replace("const dt = 0.1", "const   dt=0.1").replace(
        "activation = tanh", "activation = tanhh")
    spec = tmp_path / "di.scpo"
    spec.write_text(messy)
    [error] = check_text(messy, path=str(spec)).diagnostics
    tanhh = at(messy, "tanhh")
    fixed = messy.replace("tanhh", "tanh")
    (tmp_path / "fixed.scpo").write_text(fixed)
    fmt = subprocess.run([sys.executable, "-m", "scpo_spec.cli", "fmt",
                          str(tmp_path / "fixed.scpo")],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert fmt != fixed  # the layout is messy: formatting has something to do
    plan = {"spec": str(spec), "out": str(tmp_path / "seen.json"), "cwd": str(ROOT),
            "root": str(tmp_path), "cmd": [sys.executable, "-m", "scpo_spec.cli", "lsp"],
            "fix": {"line": tanhh["line"], "start": tanhh["character"],
                    "stop": tanhh["character"] + 5, "text": "tanh"},
            "hover": at(fixed, "abs(position)", len("abs(p")),
            "use": at(fixed, "[[1, dt]", len("[[1, d"))}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    init = tmp_path / "init.lua"
    init.write_text(NVIM_INIT)
    env = {**os.environ, "SCPO_NVIM_PLAN": str(tmp_path / "plan.json"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           **{f"XDG_{d}_HOME": str(tmp_path / d.lower()) for d in ("CONFIG", "DATA", "STATE",
                                                                    "CACHE")}}
    proc = subprocess.run([NVIM, "--headless", "--clean", "-u", str(init)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert (tmp_path / "seen.json").exists(), (proc.returncode, proc.stdout, proc.stderr)
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert "error" not in seen, seen["error"]

    assert seen["opened_in_time"], seen
    [d] = seen["opened"]
    assert (d["line"], d["col"]) == (error.span.line - 1, error.span.column - 1) \
        == (tanhh["line"], tanhh["character"])
    assert d["end_col"] == tanhh["character"] + 5 and d["severity"] == 1  # ERROR
    assert d["message"] == f"{error.message}\nhint: {error.hint}"
    assert "unknown activation 'tanhh'" in d["message"]

    assert seen["cleared_in_time"] and seen["after_fix"] == [], seen

    assert "position" in seen["hover"]["value"] and "state 0 of 2" in seen["hover"]["value"]

    assert seen["jumped_in_time"], seen
    const = at(fixed, "const   dt", len("const   "))
    assert seen["definition"] == [const["line"] + 1, const["character"]]

    assert "\n".join(seen["formatted"]) + "\n" == fmt


# What VS Code does with the packaged extension's entry point, short of VS Code: require it from
# the unpacked .vsix, with a stand-in `vscode` module (every name a class), so that the
# language client resolves from the node_modules the package carries and nothing else.
NODE_LOAD = r"""
const Module = require("module");
const resolve = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  return request === "vscode" ? "vscode" : resolve.call(this, request, ...rest);
};
require.cache.vscode = { id: "vscode", filename: "vscode", loaded: true,
  exports: new Proxy({}, { get: (_, key) => (key === "__esModule" ? false : class {}) }) };
const entry = process.argv[2];
const ext = require(entry);
const client = require.resolve("vscode-languageclient/node", { paths: [entry] });
console.log(JSON.stringify({ activate: typeof ext.activate, deactivate: typeof ext.deactivate,
                             client }));
"""


# as docs/editor.md says it (without the two flags vsce stops to ask, and Enter answers no)
PACKAGE = "npx @vscode/vsce package --allow-missing-repository --skip-license"


def _tree(folder: Path) -> list[tuple[str, bytes]]:
    return sorted((str(p.relative_to(folder)), p.read_bytes()) for p in folder.rglob("*")
                  if p.is_file())


@pytest.fixture(scope="module")
def vsix(tmp_path_factory) -> Path:
    """The .vsix built as docs/editor.md says (`npm install`, `npx @vscode/vsce package`), in a
    copy of editors/vscode so that nothing is written into the repository."""
    if NPM is None:
        pytest.skip("npm is not installed: the .vsix cannot be built (node is not needed "
                    "otherwise; tests/lsp/test_editor.py checks the manifest and grammar without it)")
    assert PACKAGE in (ROOT / "docs" / "editor.md").read_text()
    source = ROOT / "editors" / "vscode"
    before = _tree(source)
    work = tmp_path_factory.mktemp("vsix") / "vscode"
    shutil.copytree(source, work)
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false",
           "npm_config_audit": "false"}
    for command in (["npm", "install"], ["npx", "--yes", *PACKAGE.split()[1:]]):
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=600)
        assert done.returncode == 0, (command, done.stdout[-3000:], done.stderr[-3000:])
    assert _tree(source) == before  # the repository's folder is untouched
    manifest = json.loads((source / "package.json").read_text())
    [built] = work.glob("scpo-*.vsix")  # what `code --install-extension scpo-*.vsix` takes
    assert built.name == f"{manifest['name']}-{manifest['version']}.vsix"
    return built


@pytest.mark.slow
def test_the_vsix_manifest_grammar_and_entry_point(vsix, tmp_path):
    with zipfile.ZipFile(vsix) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("extension/package.json"))
        assert manifest == json.loads((ROOT / "editors" / "vscode" / "package.json").read_text())
        assert manifest["name"] == "scpo" and manifest["publisher"]
        assert manifest["engines"]["vscode"].startswith("^1.")
        assert "onLanguage:scpo" in manifest["activationEvents"]
        [language] = manifest["contributes"]["languages"]
        assert language["id"] == "scpo" and language["extensions"] == [".scpo"]
        json.loads(z.read("extension/" + language["configuration"].removeprefix("./")))
        [grammar] = manifest["contributes"]["grammars"]
        assert grammar["language"] == "scpo"
        shipped = json.loads(z.read("extension/" + grammar["path"].removeprefix("./")))
        assert shipped["scopeName"] == grammar["scopeName"] == "source.scpo"
        # the grammar tests/lsp/test_editor.py checks token by token is the one that ships
        assert shipped == json.loads(
            (ROOT / "editors" / "vscode" / "syntaxes" / "scpo.tmLanguage.json").read_text())
        entry = "extension/" + manifest["main"].removeprefix("./")
        assert entry in names
        assert "extension/node_modules/vscode-languageclient/node.js" in names
        vsix_manifest = z.read("extension.vsixmanifest").decode()
        assert f'Id="scpo" Version="{manifest["version"]}"' in vsix_manifest
        assert f'Value="{manifest["engines"]["vscode"]}"' in vsix_manifest
        z.extractall(tmp_path / "unpacked")
    script = tmp_path / "load.js"
    script.write_text(NODE_LOAD)
    loaded = subprocess.run(["node", str(script), str(tmp_path / "unpacked" / entry)],
                            capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    said = json.loads(loaded.stdout)
    assert said["activate"] == said["deactivate"] == "function"
    assert Path(said["client"]).is_relative_to(tmp_path / "unpacked" / "extension" / "node_modules")
