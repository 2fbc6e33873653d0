"""The pack's custom socket types."""

from comfy_api.latest import io

Keypoints = io.Custom("BOLID_KEYPOINTS")
