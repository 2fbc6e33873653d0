"""Body-ID: pose keypoints, Gaussian keypoint weighting, the body VAE."""

from .keypoints import COCO_KEYPOINT_NAMES, COCO_SKELETON, NUM_KEYPOINTS, PoseKeypoints, parse_keypoints_json
from .weighting import WeightedViews, keypoint_weight_map, weight_views

__all__ = [
    "COCO_KEYPOINT_NAMES",
    "COCO_SKELETON",
    "NUM_KEYPOINTS",
    "PoseKeypoints",
    "WeightedViews",
    "keypoint_weight_map",
    "parse_keypoints_json",
    "weight_views",
]
