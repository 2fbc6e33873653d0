"""Regions: several people in one image, each region attending only to its own person (FaceStudio)."""

from __future__ import annotations

from comfy_api.latest import io

from ..bolid_core.identity.region_preview import draw_regions_preview
from ..bolid_core.identity.regions import Region, RegionSet
from .types import BodyIDType, FaceEmbedsType, RegionsType


class AddRegion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDAddRegion",
            display_name="BoLID Add Region",
            category="BoLID/regions",
            description=(
                "One person and where they are: the latent tokens of this region attend only to this person's face "
                "and body. Chain one node per person; the first is region 0. Masks come from BoLID Person Regions "
                "(one layer per person, left to right) or from any MASK."
            ),
            inputs=[
                io.Mask.Input("mask", tooltip="Where this person is; any resolution. A batch: see mask_index."),
                io.Int.Input(
                    "mask_index", default=0, min=0, max=63,
                    tooltip="Which layer of a mask batch is this person (BoLID Person Regions: 0 is the leftmost).",
                ),
                FaceEmbedsType.Input("face_embeds", optional=True, tooltip="This person's face (BoLID Face Embed)."),
                BodyIDType.Input("body_id", optional=True, tooltip="This person's body (a BoLID adapter only)."),
                RegionsType.Input("regions", optional=True, tooltip="The regions so far; this one is added last."),
            ],
            outputs=[RegionsType.Output(display_name="regions")],
        )  # fmt: skip

    @classmethod
    def execute(cls, mask, mask_index: int, face_embeds=None, body_id=None, regions=None) -> io.NodeOutput:
        layers = mask[None] if mask.ndim == 2 else mask
        if mask_index >= layers.shape[0]:
            raise ValueError(
                f"mask_index {mask_index} is past the mask batch ({layers.shape[0]} layers, 0 to "
                f"{layers.shape[0] - 1}): lower it, or find more people in BoLID Person Regions."
            )
        region = Region(layers[mask_index : mask_index + 1], face=face_embeds, body=body_id)
        return io.NodeOutput((regions if regions is not None else RegionSet()).added(region))


class RegionsPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDRegionsPreview",
            display_name="BoLID Regions Preview",
            category="BoLID/regions",
            description=(
                "Each region in its person's colour with its number, over the image if one is given: what the "
                "attention will do, overlaps resolved as it resolves them."
            ),
            inputs=[
                RegionsType.Input("regions"),
                io.Image.Input("image", optional=True, tooltip="Drawn under the regions, e.g. the layout photo."),
            ],
            outputs=[io.Image.Output(display_name="preview")],
        )

    @classmethod
    def execute(cls, regions: RegionSet, image=None) -> io.NodeOutput:
        if not len(regions):
            raise ValueError("No regions to preview: add one with BoLID Add Region.")
        return io.NodeOutput(draw_regions_preview(image, [region.mask for region in regions.regions]))
