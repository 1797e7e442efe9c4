"""scpo-spec: train neural policies that never leave a safe operating regime.

The data flow is one-way: text → parse → model → check → compile → engine → audit → report.
This package currently provides the first half: the `.scpo`/YAML language, its typed model and
the checks (`scpo check`).
"""

from scpo_spec.spec.load import load_spec, check_text, check_file
from scpo_spec.spec.diagnostics import Diagnostic, SpecError
from scpo_spec.spec.model import Spec

__all__ = ["load_spec", "check_text", "check_file", "Diagnostic", "SpecError", "Spec"]
__version__ = "0.1.0"
