"""Every registered objective declares what the survey table and the trainer need."""

from __future__ import annotations

import pytest

from ptmkit.objectives import OBJECTIVES, get_objective
from ptmkit.errors import UserError

FAMILIES = {"AR", "AE", "permuted", "denoising", "shallow", "contrastive"}
ARCHITECTURES = {"encoder", "decoder", "prefix", "two_stream", "encoder_decoder", "lstm", "shallow"}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_declares_family_architecture_and_options(name: str) -> None:
    cls = OBJECTIVES[name]
    assert cls.name == name
    assert cls.family in FAMILIES, f"{name}.family"
    assert cls.architecture in ARCHITECTURES, f"{name}.architecture"
    with pytest.raises(UserError, match="unknown option"):
        cls.parse_options({"no_such_option": 1})


def test_the_issue_names_are_all_registered() -> None:
    expected = "word2vec elmo clm mlm wwm plm mpnet mass bart electra t5 prefixlm contrastive".split()
    assert sorted(OBJECTIVES) == sorted(expected)
    with pytest.raises(UserError, match="use one of: bart, clm"):
        get_objective("gpt")
