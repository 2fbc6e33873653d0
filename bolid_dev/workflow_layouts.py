"""How each shipped workflow is laid out for the editor: its stages, group titles and the note that explains it.

`python -m bolid_dev.ui_workflow` turns workflows/api/<name>.json plus LAYOUTS[name] into workflows/<name>.json.
Nodes go to a stage by their class (STAGE_OF_CLASS) unless a layout names them in `stages` (API node id → stage).
Stages run left to right in Stage order, one titled group each; the note sits above them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Stage(enum.IntEnum):
    """Left-to-right order of the groups."""

    MODELS = 0
    INPUTS = 1
    IDENTITY = 2
    GUIDANCE = 3
    SAMPLING = 4
    OUTPUT = 5


DEFAULT_GROUP_TITLES = {
    Stage.MODELS: "1 · Models",
    Stage.INPUTS: "2 · Inputs",
    Stage.IDENTITY: "3 · Identity",
    Stage.GUIDANCE: "4 · Guidance",
    Stage.SAMPLING: "5 · Sampling",
    Stage.OUTPUT: "6 · Output",
}

STAGE_OF_CLASS = {
    # models: everything read from the models folders
    "CheckpointLoaderSimple": Stage.MODELS,
    "CLIPVisionLoader": Stage.MODELS,
    "LoraLoaderModelOnly": Stage.MODELS,
    "BoLIDAdapterLoader": Stage.MODELS,
    "BoLIDUnifiedLoader": Stage.MODELS,
    "BoLIDInsightFaceLoader": Stage.MODELS,
    "BoLIDPoseModelLoader": Stage.MODELS,
    "BoLIDBodyEncoderLoader": Stage.MODELS,
    "BoLIDSegmentationModelLoader": Stage.MODELS,
    "BoLIDMiniatureModelLoader": Stage.MODELS,
    # inputs: what the user brings (text, pictures, saved IDs, canvas size)
    "CLIPTextEncode": Stage.INPUTS,
    "ConditioningZeroOut": Stage.INPUTS,
    "EmptyLatentImage": Stage.INPUTS,
    "LoadImage": Stage.INPUTS,
    "LoadImageMask": Stage.INPUTS,
    "LoadImageDataSetFromFolder": Stage.INPUTS,
    "ImageBatch": Stage.INPUTS,
    "RebatchImages": Stage.INPUTS,
    "BoLIDKeypointsFromJSON": Stage.INPUTS,
    "BoLIDLoadBodyID": Stage.INPUTS,
    "BoLIDLoadFaceEmbeds": Stage.INPUTS,
    "BoLIDLoadImageEmbeds": Stage.INPUTS,
    "BoLIDRandomBodyID": Stage.INPUTS,
    # identity: turning inputs into identity vectors and regions
    "BoLIDBodyIDFromImages": Stage.IDENTITY,
    "BoLIDBlendBodyIDs": Stage.IDENTITY,
    "BoLIDFaceEmbed": Stage.IDENTITY,
    "BoLIDFacesOfOnePerson": Stage.IDENTITY,
    "BoLIDIdentityMix": Stage.IDENTITY,
    "BoLIDEncodeImage": Stage.IDENTITY,
    "BoLIDPersonRegions": Stage.IDENTITY,
    "BoLIDAddRegion": Stage.IDENTITY,
    "BoLIDKeypointWeighting": Stage.IDENTITY,
    "BoLIDNegativeImageNoise": Stage.IDENTITY,
    # guidance: what changes the model or the guidance
    "BoLIDApplyAdapter": Stage.GUIDANCE,
    "BoLIDApplyStyleComposition": Stage.GUIDANCE,
    "BoLIDFastFaceAttention": Stage.GUIDANCE,
    "BoLIDDecoupledCFGGuider": Stage.GUIDANCE,
    "BoLIDTrainAdapter": Stage.GUIDANCE,
    # sampling
    "KSampler": Stage.SAMPLING,
    "KSamplerSelect": Stage.SAMPLING,
    "BasicScheduler": Stage.SAMPLING,
    "RandomNoise": Stage.SAMPLING,
    "SamplerCustomAdvanced": Stage.SAMPLING,
    # output
    "VAEDecode": Stage.OUTPUT,
    "ImageScaleBy": Stage.OUTPUT,
    "SaveImage": Stage.OUTPUT,
    "PreviewImage": Stage.OUTPUT,
    "PreviewAny": Stage.OUTPUT,
    "BoLIDSaveBodyID": Stage.OUTPUT,
    "BoLIDSaveFaceEmbeds": Stage.OUTPUT,
    "BoLIDSaveImageEmbeds": Stage.OUTPUT,
    "BoLIDRegionsPreview": Stage.OUTPUT,
    "BoLIDFastFaceMetrics": Stage.OUTPUT,
}


@dataclass(frozen=True)
class WorkflowLayout:
    title: str  # the note's first line
    note: str  # the method in a few lines, then the two or three knobs that matter
    group_titles: dict[Stage, str] = field(default_factory=dict)  # overrides DEFAULT_GROUP_TITLES
    stages: dict[str, Stage] = field(default_factory=dict)  # API node id → stage, overriding STAGE_OF_CLASS

    def stage_of(self, node_id: str, class_type: str) -> Stage:
        if node_id in self.stages:
            return self.stages[node_id]
        if class_type not in STAGE_OF_CLASS:
            raise ValueError(
                f"Node {node_id} ({class_type}) has no stage: add it to STAGE_OF_CLASS or to the layout's "
                "`stages` in bolid_dev/workflow_layouts.py."
            )
        return STAGE_OF_CLASS[class_type]

    def group_title(self, stage: Stage) -> str:
        return self.group_titles.get(stage, DEFAULT_GROUP_TITLES[stage])

    def note_text(self) -> str:
        return f"{self.title}\n\n{self.note.strip()}"


_FASTFACE_NOTE = """
FastFace makes an ID adapter trained for 30-50 step SDXL work on a 4-step model, without training.
IP-Adapter FaceID-Plus-v2 (with its LoRA on the UNet) injects the face; {am} reshapes the face branch's
attention map; decoupled CFG (DCG) splits the guidance into an ID term (alpha) and a text term (beta).

Knobs that matter:
- DCG alpha / beta: one number for all steps, or one per step, as many as the scheduler's steps (published
  4-step: alpha 1, 1.5, 1.5, 1 and beta 1, 3, 3, 1). Raise alpha for likeness, beta for prompt following.
- face_weight on Apply Adapter (0.8): the face's strength.
- {knob}
"""


def _fastface_layout(am: str, method: str, custom_inputs: str) -> WorkflowLayout:
    """The two FastFace workflows differ only in the attention manipulation (AM1 or AM2)."""
    knob = f"preset on FastFace Attention Manipulation: '{am} (published)'; with '{am} custom', {custom_inputs}."
    return WorkflowLayout(
        f"FastFace: 4 steps, FaceID-Plus-v2 + LoRA, {am} + DCG",
        _FASTFACE_NOTE.format(am=method, knob=knob),
        {Stage.GUIDANCE: f"4 · Guidance: adapter, {am}, DCG"},
        stages={"20": Stage.GUIDANCE},  # the zero negative belongs to DCG: FastFace passes no negative prompt
    )


LAYOUTS: dict[str, WorkflowLayout] = {
    "bolid_keypoint_weighting": WorkflowLayout(
        "BoLID: keypoint weighting of a view",
        """
Each view of a person is weighted around its pose keypoints: w = exp(-d²/2σ²) per keypoint; W is their
maximum, normalised to peak 1; the image becomes I·(α + (1-α)·W). This workflow makes an image and shows
the weight map the keypoints give it.

Knobs that matter:
- sigma: the Gaussian's width, as a fraction of the image's shorter side (0.08).
- alpha: how much of the image survives far from every keypoint (0.25).
- keypoints_json: 17 COCO points [x, y, confidence], x and y as fractions of the width and height,
  confidence in 0..1; a point with confidence 0 counts for nothing.
""",
        {Stage.OUTPUT: "6 · Output: the image and its weight map"},
        stages={"8": Stage.OUTPUT},  # it weights the generated image, so it follows the decoder
    ),
    "bolid_body_id_from_views": WorkflowLayout(
        "BoLID: a body ID from several views, saved",
        """
YOLO11-pose finds the keypoints of each view; each view is weighted around them and encoded by the body VAE;
the views are averaged, weighted by pose confidence, into one body ID (the encoder's latent size, 756 by
default). The body ID is saved under models/bolid/bodies/ and is used right away to make an image.

Knobs that matter:
- detection_confidence / keypoint_confidence on Body ID From Images: which people and which points count.
- sigma / alpha there: the keypoint weighting (see the keypoint weighting workflow).
- body_weight on Apply Adapter: how strongly the body ID shapes the person (0.8).
""",
        {Stage.INPUTS: "2 · Prompt and views", Stage.IDENTITY: "3 · Body ID from views"},
    ),
    "bolid_text_and_saved_body": WorkflowLayout(
        "BoLID: text plus a saved body ID, no reference image",
        """
A body ID saved before (by the body-ID-from-views workflow) is loaded by name and steers the person's body
shape next to the text. With no reference image the image term of the decoupled attention is left out.

Knobs that matter:
- body: the saved body ID (models/bolid/bodies/).
- body_weight on Apply Adapter (λ_b): 0 gives the text alone; about 0.8 keeps the prompt in charge.
""",
        {Stage.INPUTS: "2 · Prompt and saved body"},
    ),
    "bolid_reference_adapter": WorkflowLayout(
        "BoLID: a reference image through the adapter",
        """
The reference image is encoded by CLIP vision and added as its own cross-attention term next to the text:
Z' = Attn(Q,K_t,V_t) + λ_ref·Attn(Q,K_ref,V_ref).

Knobs that matter:
- image_weight (λ_ref, 0.7): how much of the reference shows (0 = text alone).
- start_at / end_at: the part of the sampling where the adapter acts.
""",
    ),
    "bolid_reference_and_body": WorkflowLayout(
        "BoLID: a reference image and a body ID",
        """
Both identity sources at once: the reference image (CLIP vision) and a saved body ID each get a
cross-attention term next to the text: Z' = Attn_text + λ_ref·Attn_ref + λ_b·Attn_body.

Knobs that matter:
- image_weight (λ_ref, 0.7): how much of the reference image shows.
- body_weight (λ_b, 0.8): how strongly the body ID shapes the person.
- body: the saved body ID (models/bolid/bodies/).
""",
    ),
    "bolid_miniature_body_id": WorkflowLayout(
        "BoLID: the shipped miniature model, two body IDs and a run without one",
        """
Runs without an SDXL checkpoint: the pack's miniature base and adapter. The same prompt and seed are
sampled with a tall-slim body ID, a short-broad body ID and no adapter, so the body ID's effect shows side
by side.

Knobs that matter:
- body on each Load Body ID: which saved body steers each image.
- body_weight on each Apply Adapter (1.0): the body ID's strength.
""",
    ),
    "fastface_am2_dcg": _fastface_layout(
        "AM2",
        "AM2 (scheduled softmax)",
        "am2_scale (1.0 at the first step, then 1.55) and am2_sharpness (7.5, then 5.0)",
    ),
    "fastface_am1_dcg": _fastface_layout(
        "AM1", "AM1 (scale-power s·A^p)", "am1_power p (1.3) and am1_scale_down / am1_scale_up s (1.55 / 1.45)"
    ),
    "fastface_evaluation_folder": WorkflowLayout(
        "FastFace evaluation over a folder of images",
        """
Scores the images of a folder as the FastFace paper does: ID similarity (ArcFace cosine to the reference
face), CLIP score against the prompt, face_fail_cnt (images with no face) and face_style_score (the face
crop against the prompt's style part, the text before the first ';'). One report per batch of
RebatchImages (64 images): raise its batch_size to score a larger folder at once.

Knobs that matter:
- folder: the images to score (under input/).
- prompt: 'style ; person, location, action', the prompt the images were made with.
- reference_face: the person they should show.
""",
        {Stage.OUTPUT: "6 · Scores"},
    ),
    "ipadapter_plus_faceid_converted": WorkflowLayout(
        "An IPAdapter_plus FaceID workflow, converted",
        """
An IPAdapter_plus FaceID-Plus-v2 workflow, converted by `python -m bolid_core.convert`: node by node, plus
a Face Embed in front of the apply node. The unified loader picks the adapter, its LoRA and CLIP vision by
preset; the face goes through insightface.

Knobs that matter:
- preset (faceid plus v2) and lora_strength (0.6) on the unified loader.
- face_weight on Apply Adapter (0.85, IPAdapter_plus's weight).
- weight_type / embeds_scaling: kept from the original workflow.
""",
    ),
    "facestudio_identity_mix_and_style": WorkflowLayout(
        "FaceStudio: a style image and a face, identities mixed",
        """
Hybrid identity guidance: each identity is Linear(style ‖ ArcFace(face)), the style being the style image's
CLIP-vision embedding blended with the style prompt. Two photos of one person are checked and combined; a
second person is mixed in with weights; the style image and style prompt set the look.

Knobs that matter:
- weight_1 / weight_2 on Identity Mix: the blend of the two people (0.6 / 0.4).
- face_weight / body_weight on Apply Adapter (0.8 / 0.8).
- style_image_share on Apply Adapter (0.5): the style image's share of the style, the rest from the prompt.
""",
        stages={"10": Stage.IDENTITY},  # batching the two photos of one person is part of building the identity
    ),
    "facestudio_two_people_face_and_body": WorkflowLayout(
        "FaceStudio: two people in regions, each with a face and a body",
        """
Multi-identity cross-attention: the latent tokens of region i attend only to identity i. Each region is a
mask with its own face and body ID; the preview shows the regions with their numbers.

Knobs that matter:
- the two masks (LoadImageMask): where each person stands.
- face_weight / body_weight on Apply Adapter (0.8 / 0.8).
- region_background on Apply Adapter (nearest): what the tokens outside every region see.
""",
        {Stage.IDENTITY: "3 · Faces and regions"},
    ),
    "facestudio_two_people_faceid": WorkflowLayout(
        "FaceStudio: two people found by segmentation, FaceID-Plus-v2",
        """
YOLO11-seg finds the people in a layout photo; each person's mask becomes a region that attends only to
its own face. Works with IP-Adapter FaceID-Plus-v2 and its LoRA.

Knobs that matter:
- confidence / max_people / order on Person Regions: which masks, in which order.
- mask_index on each Add Region: which person gets which face.
- face_weight on Apply Adapter (0.8).
""",
        {Stage.IDENTITY: "3 · Faces and regions"},
    ),
    "train_bolid_adapter": WorkflowLayout(
        "BoLID: training an adapter",
        """
Trains the BoLID adapter on a folder of input/bolid_datasets (one subfolder per person: images, with
captions in <stem>.txt or caption.txt):
L = L_diff + α_id·L_id + β_CLIP·(1 - cos). The node draws the loss live, keeps resumable checkpoints in
output/bolid_training/<adapter_name> and writes the adapter to models/bolid/<adapter_name>.safetensors.

Knobs that matter:
- steps, learning_rate, grad_accumulation.
- alpha_id / beta_clip: the keypoint and CLIP loss terms (0 = diffusion loss only). alpha_id needs a
  pose model connected; beta_clip a CLIP vision in the text's space (CLIP-ViT-bigG-14 for SDXL).
- checkpoint_every: how often a resumable checkpoint is written.
""",
        {Stage.GUIDANCE: "4 · Training"},
    ),
    "train_bolid_adapter_resume": WorkflowLayout(
        "BoLID: resuming a training run",
        """
Continues a run in output/bolid_training/<adapter_name> from its newest complete checkpoint: the weights,
the optimizer state, the step and the random state come back, so the run goes on where it stopped.

Knobs that matter:
- resume: the run to continue (its adapter_name).
- steps: the total to reach, counting the steps already done.
- learning_rate: the run's own (0.0001); another rate is refused, since the optimizer state comes back.
""",
        {Stage.GUIDANCE: "4 · Training (resumed)"},
    ),
}
