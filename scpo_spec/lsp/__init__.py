"""`scpo lsp`: the language server editors talk to (docs/editor.md).

analysis.py answers every question (diagnostics, hover, completion, definition, outline, format)
from the language layer's own parser, checker and formatter, in plain Python positions;
server.py is the pygls wiring: the protocol, the debounce, the client's position units."""
