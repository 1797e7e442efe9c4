"""The pygls server behind `scpo lsp`: documents in, analysis.py's answers out.

Checks run on one worker thread, so the event loop keeps answering hover and completion while a
spec is checked.  A change is checked DEBOUNCE seconds after the last keystroke, and only the
latest version's diagnostics are published (an older check that finishes late is dropped).  The
checks that run the author's code (compile/usercode.py: import a python plant, load TorchScript
files — torch) run only on save, as the second stage of `scpo check` does; their diagnostics stay
until the next save.
"""

from __future__ import annotations

import asyncio
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lsprotocol import types as T
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from scpo_spec import __version__
from scpo_spec.language.diagnostics import Diagnostic
from scpo_spec.language.load import CheckResult, parse_model
from scpo_spec.lsp import analysis

DEBOUNCE = 0.3  # seconds after the last change before a spec is checked


@dataclass
class _Doc:
    """What the server knows of one open document."""

    pending: asyncio.Task | None = None
    checked: CheckResult | None = None    # the latest check of the current version, if any
    version: int | None = None            # the version `checked` is of
    built: CheckResult | None = None      # the last check that built a model (names, spans)
    passed: CheckResult | None = None     # the last check without errors (compiled formulas)
    code: list[Diagnostic] = field(default_factory=list)  # the code checks of the last save


class ScpoLanguageServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("scpo", __version__,
                         text_document_sync_kind=T.TextDocumentSyncKind.Incremental)
        self.checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scpo-check")
        self.docs: dict[str, _Doc] = {}

    # ------------------------------------------------------------ checking
    @staticmethod
    def where(uri: str) -> tuple[str, Path | None]:
        """The path diagnostics name and the folder data paths are relative to."""
        path = to_fs_path(uri) if uri.startswith("file:") else None
        if path is None:
            return uri, None
        return path, Path(path).resolve().parent

    def schedule(self, uri: str, delay: float, code: bool = False) -> None:
        """Check the document after `delay` seconds, cancelling a check still waiting."""
        doc = self.docs.setdefault(uri, _Doc())
        if doc.pending is not None and not doc.pending.done():
            doc.pending.cancel()
        doc.pending = asyncio.get_running_loop().create_task(self.run_check(uri, delay, code))

    async def run_check(self, uri: str, delay: float, code: bool) -> None:
        if delay:
            await asyncio.sleep(delay)
        document = self.workspace.get_text_document(uri)
        version, text = document.version, document.source
        path, base_dir = self.where(uri)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.checks, analysis.check, text, path, base_dir)
        doc = self.docs.get(uri)
        if doc is None:  # closed meanwhile
            return
        if code:
            doc.code = await loop.run_in_executor(self.checks, analysis.code_checks, result,
                                                  base_dir)
        if result.spec is not None:
            doc.built = result
        if result.ok:
            doc.passed = result
        if self.workspace.get_text_document(uri).version != version:
            return  # a newer version is (or will be) checked: latest wins
        doc.checked, doc.version = result, version
        shown = result.diagnostics + (doc.code if result.ok else [])
        document = self.workspace.get_text_document(uri)
        diagnostics = []
        for d in shown:
            item = analysis.to_lsp(d)
            item.range = self.to_client(document, item.range)
            diagnostics.append(item)
        self.text_document_publish_diagnostics(T.PublishDiagnosticsParams(
            uri=uri, version=version, diagnostics=diagnostics))

    # ------------------------------------------------------------ positions
    @staticmethod
    def to_client(document, r: T.Range) -> T.Range:
        return document.position_codec.range_to_client_units(document.lines, r)

    @staticmethod
    def from_client(document, p: T.Position) -> tuple[list[str], int, int]:
        lines = [line.rstrip("\r\n") for line in document.lines]
        p = document.position_codec.position_from_client_units(document.lines, p)
        return lines, p.line, p.character

    def model(self, uri: str, fresh: bool, skip_line: int | None = None) -> CheckResult | None:
        """A model for answers: the check of the current version; else, for names (not
        `fresh`), the last model that built, a few hundred ms old while typing; else the current
        text read again without the checks (without line `skip_line`, the one being typed, which
        seldom parses yet); else the last model that built."""
        doc = self.docs.setdefault(uri, _Doc())
        document = self.workspace.get_text_document(uri)
        if doc.checked is not None and doc.version == document.version and doc.checked.spec:
            return doc.checked
        if not fresh and doc.built is not None:
            return doc.built
        text = document.source
        if skip_line is not None:
            lines = text.split("\n")
            if 0 <= skip_line < len(lines):
                lines[skip_line] = ""
            text = "\n".join(lines)
        result = parse_model(text, path=self.where(uri)[0])
        return result if result.spec is not None else doc.built


SERVER = ScpoLanguageServer()


@SERVER.feature(T.TEXT_DOCUMENT_DID_OPEN)
async def did_open(ls: ScpoLanguageServer, params: T.DidOpenTextDocumentParams) -> None:
    ls.schedule(params.text_document.uri, 0)


@SERVER.feature(T.TEXT_DOCUMENT_DID_CHANGE)
async def did_change(ls: ScpoLanguageServer, params: T.DidChangeTextDocumentParams) -> None:
    ls.schedule(params.text_document.uri, DEBOUNCE)


@SERVER.feature(T.TEXT_DOCUMENT_DID_SAVE)
async def did_save(ls: ScpoLanguageServer, params: T.DidSaveTextDocumentParams) -> None:
    ls.schedule(params.text_document.uri, 0, code=True)


@SERVER.feature(T.TEXT_DOCUMENT_DID_CLOSE)
async def did_close(ls: ScpoLanguageServer, params: T.DidCloseTextDocumentParams) -> None:
    doc = ls.docs.pop(params.text_document.uri, None)
    if doc is not None and doc.pending is not None:
        doc.pending.cancel()
    ls.text_document_publish_diagnostics(T.PublishDiagnosticsParams(
        uri=params.text_document.uri, diagnostics=[]))


@SERVER.feature(T.TEXT_DOCUMENT_HOVER)
def hover(ls: ScpoLanguageServer, params: T.HoverParams) -> T.Hover | None:
    uri = params.text_document.uri
    lines, line, character = ls.from_client(ls.workspace.get_text_document(uri), params.position)
    model = ls.model(uri, fresh=False)
    text = analysis.hover(lines, line, character, model and model.spec,
                          ls.docs.get(uri, _Doc()).passed)
    if text is None:
        return None
    return T.Hover(contents=T.MarkupContent(kind=T.MarkupKind.Markdown, value=text))


@SERVER.feature(T.TEXT_DOCUMENT_COMPLETION,
                T.CompletionOptions(trigger_characters=[" ", "(", ":", "{"]))
def completion(ls: ScpoLanguageServer, params: T.CompletionParams) -> T.CompletionList:
    uri = params.text_document.uri
    lines, line, character = ls.from_client(ls.workspace.get_text_document(uri), params.position)
    model = ls.model(uri, fresh=False, skip_line=line)
    items = analysis.completion(lines, line, character, model and model.spec)
    return T.CompletionList(is_incomplete=False, items=items)


@SERVER.feature(T.TEXT_DOCUMENT_DEFINITION)
def definition(ls: ScpoLanguageServer, params: T.DefinitionParams) -> T.Location | None:
    uri = params.text_document.uri
    document = ls.workspace.get_text_document(uri)
    lines, line, character = ls.from_client(document, params.position)
    model = ls.model(uri, fresh=True)
    span = analysis.definition(lines, line, character, model and model.spec)
    if span is None:
        return None
    return T.Location(uri=uri, range=ls.to_client(document, analysis.span_range(span)))


@SERVER.feature(T.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
def document_symbol(ls: ScpoLanguageServer,
                    params: T.DocumentSymbolParams) -> list[T.DocumentSymbol]:
    uri = params.text_document.uri
    document = ls.workspace.get_text_document(uri)
    model = ls.model(uri, fresh=True)
    found = analysis.symbols(model and model.spec)

    def convert(symbol: T.DocumentSymbol) -> T.DocumentSymbol:
        symbol.range = ls.to_client(document, symbol.range)
        symbol.selection_range = ls.to_client(document, symbol.selection_range)
        for child in symbol.children or []:
            convert(child)
        return symbol
    return [convert(s) for s in found]


@SERVER.feature(T.TEXT_DOCUMENT_FORMATTING)
def formatting(ls: ScpoLanguageServer, params: T.DocumentFormattingParams) -> list[T.TextEdit]:
    """The whole document replaced by `scpo fmt`'s text; nothing when it has errors."""
    uri = params.text_document.uri
    document = ls.workspace.get_text_document(uri)
    text = document.source
    new = analysis.formatted(text, ls.where(uri)[0])
    if new is None or new == text:
        return []
    end = T.Position(line=len(document.lines), character=0)
    return [T.TextEdit(range=T.Range(start=T.Position(line=0, character=0), end=end),
                       new_text=new)]


def serve() -> None:
    """Speak LSP on stdin/stdout.  The protocol gets its own copy of stdout, and file descriptor
    1 becomes stderr: a module a spec imports (a gymnasium environment) that prints, even from C,
    cannot corrupt the stream."""
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    SERVER.start_io(sys.stdin.buffer, protocol_out)
