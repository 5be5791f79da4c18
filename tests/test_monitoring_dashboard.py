"""The dashboard's shape, which no Prometheus can check: panels tile the grid without overlapping, every query
goes to the datasource variable, and every query over a server's own series follows the instance variable (so
choosing an instance filters every panel). Its queries are run for real in test_monitoring_prometheus.py."""

from __future__ import annotations

import json
import re
from itertools import combinations
from typing import Any

from inferd.deploy.monitoring import DASHBOARD

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def test_panels_tile_the_grid() -> None:
    panels = _dashboard()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    boxes = [panel["gridPos"] for panel in panels]
    assert all(box["x"] >= 0 and box["x"] + box["w"] <= 24 and box["h"] > 0 for box in boxes)
    for a, b in combinations(boxes, 2):
        apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                 or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
        assert apart, (a, b)


def test_variables_are_the_datasource_the_instance_and_the_model() -> None:
    variables = {variable["name"]: variable for variable in _dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "model"):
        assert variables[name]["datasource"] == DATASOURCE
        assert re.fullmatch(rf"label_values\(.+, {name}\)", variables[name]["query"]["query"])
        assert variables[name]["multi"] and variables[name]["includeAll"]


# Series without a model label, and the failed-load ones: a model that failed to load is in no list the model
# variable offers (it serves nothing), and these panels exist to show it.
ALL_MODELS = {"inferd_models_loaded", "inferd_process_resident_memory_bytes", "process_cpu_seconds_total",
              "inferd_model_load_failed", "inferd_model_load_failures_total"}


def test_every_query_follows_the_variables() -> None:
    for panel in _dashboard()["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            selectors = re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", target["expr"])
            assert selectors, target["expr"]
            for name, labels in selectors:
                if ":" not in name:  # a recording rule aggregates the instances away; a server's series has one
                    assert 'instance=~"$instance"' in labels, f"{panel['title']}: {name} ignores $instance"
                if name not in ALL_MODELS:
                    assert 'model=~"$model"' in labels, f"{panel['title']}: {name} ignores $model"
