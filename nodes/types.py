"""The pack's custom socket types."""

from comfy_api.latest import io

Keypoints = io.Custom("BOLID_KEYPOINTS")
AdapterType = io.Custom("BOLID_ADAPTER")
FaceEmbedsType = io.Custom("BOLID_FACE_EMBEDS")
BodyIDType = io.Custom("BOLID_BODY_ID")
FaceAnalyzerType = io.Custom("BOLID_FACE_ANALYZER")
PoseModelType = io.Custom("BOLID_POSE_MODEL")
SegmentationModelType = io.Custom("BOLID_SEGMENTATION_MODEL")
BodyEncoderType = io.Custom("BOLID_BODY_ENCODER")
RegionsType = io.Custom("BOLID_REGIONS")
ImageEmbedsType = io.Custom("BOLID_IMAGE_EMBEDS")
