// The SCPO extension: starts `scpo lsp` (the language server of scpo-spec) for .scpo files.
// Highlighting comes from syntaxes/scpo.tmLanguage.json; everything else from the server.
"use strict";

const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function start(context) {
  const command = vscode.workspace.getConfiguration("scpo").get("path") || "scpo";
  const run = { command, args: ["lsp"], transport: TransportKind.stdio };
  client = new LanguageClient(
    "scpo",
    "SCPO language server",
    { run, debug: run },
    {
      documentSelector: [{ scheme: "file", language: "scpo" }, { scheme: "untitled", language: "scpo" }],
      outputChannelName: "SCPO",
    }
  );
  return client.start().catch((err) => {
    vscode.window.showErrorMessage(
      `SCPO: could not start \`${command} lsp\` (${err.message || err}). ` +
        "Install scpo-spec, or set scpo.path to its executable."
    );
  });
}

async function activate(context) {
  await start(context);
  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      if (event.affectsConfiguration("scpo.path")) {
        if (client) await client.stop();
        await start(context);
      }
    })
  );
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
