"""The spec language: parse (.scpo and YAML) → typed model → semantic checks → diagnostics."""
