"""Every registered method honours the plugin contract, checked by the shipped ``check_method``."""

import pytest

from cifc_bench.core.registry import METHODS, list_plugins, load_method
from cifc_bench.testing import QUICK_METHOD_ARGS, check_method


@pytest.mark.parametrize("name", sorted(list_plugins(METHODS)))
def test_method_contract(name, tmp_path_factory):
    check_method(load_method(name), QUICK_METHOD_ARGS.get(name), root=tmp_path_factory.mktemp(name))


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


@pytest.mark.parametrize("name,arg,good", [("finetune", "targets", "cross-attn"), ("lora-m", "weights", "uniform"),
                                           ("cidm", "merge", "prompt"), ("custom-diffusion", "variant", "merge")])
def test_a_bad_choice_names_the_value_and_every_choice_before_touching_the_model(name, arg, good):
    class Untouchable:
        def __getattr__(self, attr):
            raise AssertionError(f"the model was touched ({attr}) before the arguments were checked")

    with pytest.raises(ValueError) as err:
        load_method(name)(Untouchable(), **{arg: "no-such-choice"})
    assert f"{arg}='no-such-choice'" in str(err.value) and repr(good) in str(err.value)
