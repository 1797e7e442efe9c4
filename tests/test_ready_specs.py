"""Every ready spec in specs/ stays `scpo check`-clean (and fmt/convert-stable)."""

import pytest

from scpo_spec import load_spec
from scpo_spec.language.load import check_file
from tests.conftest import SPECS


def test_there_are_ready_specs():
    names = {p.name for p in SPECS}
    assert {"regression.scpo", "double_integrator.scpo", "linear_stability.scpo",
            "pendulum.scpo", "quadrotor.scpo", "gust.scpo", "acc.scpo"} <= names
    assert any(p.suffix in (".yaml", ".yml") for p in SPECS)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_ready_spec_is_clean(path):
    result = check_file(path)
    assert result.diagnostics == [], [d.headline() for d in result.diagnostics]
    spec = load_spec(path)
    assert spec.system is not None and spec.train is not None and spec.properties


def test_the_uncertain_ready_specs_declare_what_they_are_about():
    """gust: a disturbance entering the declared dynamics; acc: the lead car's braking as a
    parameter in [-2, -1] (ARCH-COMP ACC)."""
    gust = load_spec(next(p for p in SPECS if p.name == "gust.scpo"))
    assert [u.name.name for u in gust.disturbances] == ["gust"] and not gust.parameters
    acc = load_spec(next(p for p in SPECS if p.name == "acc.scpo"))
    assert [(u.name.name, list(u.interval.array())) for u in acc.parameters] == \
        [("a_lead", [-2.0, -1.0])]
    assert [s.name for s in acc.system.states] == ["x_lead", "v_lead", "gamma_lead", "x_ego",
                                                   "v_ego", "gamma_ego"]
