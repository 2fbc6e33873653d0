"""Room the pack's web extension (web/js) draws its previews in, below a node's own widgets.

A laid-out workflow (bolid_dev/ui_workflow.py) adds this to a node's height so each preview shows whole; otherwise the
frontend grows the node when it draws it, over its neighbours. tests/test_web_widgets.py keeps these equal to the
constants in the JS files.
"""

from __future__ import annotations

PREVIEW_HEIGHTS = {
    "BoLIDDecoupledCFGGuider": 150,  # web/js/dcg_schedule.js: the alpha/beta bars and the steps warning
    "BoLIDAddRegion": 190,  # web/js/region_preview.js: the regions so far, this identity's number
    "BoLIDRegionsPreview": 190,  # web/js/region_preview.js: all regions with their numbers
    "BoLIDTrainAdapter": 140,  # web/js/training_loss.js: the loss curve
    "BoLIDKeypointsFromJSON": 170,  # web/js/keypoints_preview.js: the typed pose
}


def preview_height(class_type: str) -> int:
    return PREVIEW_HEIGHTS.get(class_type, 0)
