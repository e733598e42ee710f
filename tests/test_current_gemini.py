"""deploy/config.current-gemini.yaml: today's Gemini models, priced by LiteLLM's bundled map, served by the provider."""

from __future__ import annotations

from pathlib import Path

import litellm
import pytest
from click.testing import CliRunner

from proxy import cli
from proxy.settings import load_settings
from proxy.upstream.pricing import price_of
from tests.standin import StandInServer

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "config.current-gemini.yaml"


def test_it_loads_with_current_flash_and_pro_models() -> None:
    settings = load_settings(CONFIG)
    assert [m.model for m in settings.models.entries] == ["gemini/gemini-2.5-flash", "gemini/gemini-2.5-pro"]


@pytest.mark.parametrize("tier", [0, 1])
def test_both_models_are_priced_by_litellms_bundled_map(tier: int) -> None:
    m = load_settings(CONFIG).models.entries[tier]
    assert m.input_cost_per_million is None and m.output_cost_per_million is None  # the map prices them
    known = litellm.model_cost[m.model]
    assert known["input_cost_per_token"] > 0 and known["output_cost_per_token"] > 0
    price = price_of(m)
    assert (price.per_input_token, price.per_output_token) == (known["input_cost_per_token"],
                                                               known["output_cost_per_token"])


def test_the_cheaper_tier_is_the_cheaper_model() -> None:
    weak, strong = (price_of(m) for m in load_settings(CONFIG).models.entries)
    assert weak.cost(1000, 1000) < strong.cost(1000, 1000)


def test_route_llm_check_finds_both_served(standin: StandInServer) -> None:
    result = CliRunner().invoke(cli.main, ["check", "--config", str(CONFIG)], catch_exceptions=False)
    assert result.exit_code == cli.EXIT_OK, result.output
    assert result.stdout.splitlines() == ["models.weak.model = gemini/gemini-2.5-flash (tier weak): served",
                                          "models.strong.model = gemini/gemini-2.5-pro (tier strong): served"]
