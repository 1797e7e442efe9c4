"""Every ready spec in specs/ stays `scpo check`-clean (and fmt/convert-stable)."""

import pytest

from scpo_spec import load_spec
from scpo_spec.language.load import check_file
from tests.conftest import SPECS


def test_there_are_ready_specs():
    names = {p.name for p in SPECS}
    assert {"regression.scpo", "double_integrator.scpo", "linear_stability.scpo",
            "pendulum.scpo", "quadrotor.scpo"} <= names
    assert any(p.suffix in (".yaml", ".yml") for p in SPECS)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_ready_spec_is_clean(path):
    result = check_file(path)
    assert result.diagnostics == [], [d.headline() for d in result.diagnostics]
    spec = load_spec(path)
    assert spec.system is not None and spec.train is not None and spec.properties
