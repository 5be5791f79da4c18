"""How `--ray-option`s become Serve's deployment options, checked without a cluster (tests/test_ray.py runs one)."""

from __future__ import annotations

import pytest

from inferd.deploy.ray.settings import RaySettings, parse_options
from inferd.errors import InvalidInput
from inferd.serve.settings import ServingSettings


def test_routers_report_their_queues_often_enough_to_scale_from_zero_quickly() -> None:
    """Serve's immediate report at zero replicas leaves the request out, so the next regular one scales up."""
    autoscaling = parse_options(["min_replicas=0", "max_replicas=3"]).model_options(ServingSettings())
    assert autoscaling["autoscaling_config"]["metrics_interval_s"] == 0.1
    assert autoscaling["autoscaling_config"]["min_replicas"] == 0
    slower = parse_options(["min_replicas=0", "max_replicas=3", "autoscaling_report_s=2"])
    assert slower.model_options(ServingSettings())["autoscaling_config"]["metrics_interval_s"] == 2.0
    assert "autoscaling_config" not in RaySettings(min_replicas=2, max_replicas=2).model_options(ServingSettings())


@pytest.mark.parametrize("value", ["0", "0.01", "61", "nan", "inf", "often"])
def test_an_autoscaling_report_interval_out_of_range_is_refused_with_its_name(value: str) -> None:
    with pytest.raises(InvalidInput, match="autoscaling_report_s"):
        parse_options([f"autoscaling_report_s={value}"])
