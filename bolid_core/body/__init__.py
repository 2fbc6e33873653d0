"""Body-ID: pose keypoints, Gaussian keypoint weighting, the body VAE."""

from .body_id import BodyID, blend_body_ids, load_body_id, sample_prior, save_body_id
from .keypoints import COCO_KEYPOINT_NAMES, COCO_SKELETON, NUM_KEYPOINTS, PoseKeypoints, parse_keypoints_json
from .weighting import WeightedViews, keypoint_weight_map, weight_views

__all__ = [
    "COCO_KEYPOINT_NAMES",
    "COCO_SKELETON",
    "NUM_KEYPOINTS",
    "BodyID",
    "PoseKeypoints",
    "WeightedViews",
    "blend_body_ids",
    "keypoint_weight_map",
    "load_body_id",
    "parse_keypoints_json",
    "sample_prior",
    "save_body_id",
    "weight_views",
]
