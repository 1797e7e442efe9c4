"""The tamper-evident audit log and its verification (numpy only: no torch needed to audit)."""
