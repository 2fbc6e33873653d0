"""The preview heights the layout reserves (bolid_dev/web_widgets.py) are those the web extension draws."""

from __future__ import annotations

import re

import pytest

from bolid_dev.runtime import REPO_ROOT
from bolid_dev.web_widgets import PREVIEW_HEIGHTS

WEB_JS = REPO_ROOT / "web" / "js"
# file -> (the constant holding the preview's height, the nodes it draws on)
PREVIEWS = {
    "dcg_schedule.js": ("PREFERRED_HEIGHT", ["BoLIDDecoupledCFGGuider"]),
    "region_preview.js": ("PREFERRED_HEIGHT", ["BoLIDAddRegion", "BoLIDRegionsPreview"]),
    "training_loss.js": ("CHART_HEIGHT", ["BoLIDTrainAdapter"]),
    "keypoints_preview.js": ("PREVIEW_HEIGHT", ["BoLIDKeypointsFromJSON"]),
}


@pytest.mark.parametrize("file_name", sorted(PREVIEWS))
def test_reserved_height_is_the_drawn_height(file_name: str) -> None:
    constant, nodes = PREVIEWS[file_name]
    source = (WEB_JS / file_name).read_text()
    heights = re.findall(rf"^const {constant} = (\d+);", source, re.MULTILINE)
    assert len(heights) == 1, f"{file_name} has no single `const {constant} = <number>;`"
    for node in nodes:
        assert f'"{node}"' in source, f"{file_name} no longer draws on {node}"
        assert PREVIEW_HEIGHTS[node] == int(heights[0]), f"{node}: layout reserves {PREVIEW_HEIGHTS[node]} px"


def test_every_preview_is_listed() -> None:
    assert set(PREVIEW_HEIGHTS) == {node for _, nodes in PREVIEWS.values() for node in nodes}
