"""Every registered method honours the plugin contract, checked by the shipped ``check_method``."""

import pytest

from cifc_bench.registry import METHODS, list_plugins, load_method
from cifc_bench.testing import check_method

#: the contract is about the interface, not about how much data a step uses: Custom Diffusion's 200 class images
#: per concept (3 minutes on the tiny model) and EWC's Fisher samples are cut to a few; the code path is the same
FAST_ARGS = {"custom-diffusion": {"reg_images": 2}, "ewc": {"fisher_samples": 2}}


@pytest.mark.parametrize("name", sorted(list_plugins(METHODS)))
def test_method_contract(name, tmp_path_factory):
    check_method(load_method(name), FAST_ARGS.get(name), root=tmp_path_factory.mktemp(name))


def test_check_method_fails_a_method_that_breaks_the_contract(tmp_path):
    from cifc_bench.methods.zero_shot import ZeroShot

    class Forgetful(ZeroShot):
        """Generates one image too few: the contract must say so."""

        def generate(self, requests, settings):
            return super().generate(requests, settings)[:-1]

    with pytest.raises(AssertionError, match="generate returned 2 images for 3 requests"):
        check_method(Forgetful, root=tmp_path)
    with pytest.raises(AssertionError, match="not a subclass of cifc_bench.api.Method"):
        check_method(dict)
