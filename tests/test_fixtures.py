"""The golden fixtures (tests/fixtures) are what the official code computes: scripts/make_fixtures.py
regenerates them from a checkout of OpenGVLab/VideoMAEv2 (float64, seeded), and with a checkout
present the regenerated files must equal the committed ones (inputs exactly, outputs to 1e-12)."""
import copy
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"


def make_fixtures():
    spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "scripts" / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.official_checkout
def test_the_committed_fixtures_are_what_the_official_checkout_computes(official_repo):
    mf = make_fixtures()
    made = mf.make_all(official_repo)
    for name in mf.FILES:
        assert mf.differences(made[name], mf.read(FIX / name)) == [], name


def test_the_comparison_sees_a_changed_weight_and_a_drifted_gradient():
    """So that the check above can fail: an input must be equal, an output within 1e-12."""
    mf = make_fixtures()
    stored = mf.read(FIX / "pretrain_parity.pt")
    assert mf.differences(stored, stored) == []
    made = copy.deepcopy(stored)
    made["state_dict"]["mask_token"].view(-1)[0] += 1e-15
    name = next(iter(made["grads"]))
    made["grads"][name] = made["grads"][name] * (1 + 1e-9)
    made["loss"] = made["loss"] * (1 + 1e-14)                        # within 1e-12: not reported
    assert mf.differences(made, stored) == ["state_dict.mask_token: differs",
                                            f"grads.{name}: relative difference 1e-09 > 1e-12"]
