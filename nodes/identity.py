"""Identities: mix several people into one (FaceStudio's mixing ratio), and many photos of one person into one."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..bolid_core.body.body_id import BodyID
from ..bolid_core.identity.embeds import FaceEmbeds
from ..bolid_core.identity.mixing import (
    DEFAULT_OUTLIER_BELOW,
    PhotoCombine,
    combine_photos,
    face_similarity,
    mix_identities,
)
from .checks import require_finite_numbers, validate_finite_numbers
from .types import BodyIDType, FaceEmbedsType

IDENTITY_SLOTS = 4


def _slot_inputs(slot: int) -> list[io.Input]:
    return [
        FaceEmbedsType.Input(f"face_embeds_{slot}", optional=True, tooltip=f"Identity {slot}'s face (or photos)."),
        BodyIDType.Input(f"body_id_{slot}", optional=True, tooltip=f"Identity {slot}'s body ID."),
        io.Float.Input(
            f"weight_{slot}", default=1.0, min=0.0, max=10.0, step=0.05,
            tooltip="β: this identity's share before normalisation; 0 leaves it out.",
        ),
    ]  # fmt: skip


class IdentityMix(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDIdentityMix",
            display_name="BoLID Identity Mix",
            category="BoLID/identity",
            description=(
                "Blends several people into one identity, FaceStudio's e = Σ β_i·e_i with the ratios β normalised "
                "to sum to 1: faces over the slots that have a face, body IDs over the slots that have a body. "
                "A slot with several photos counts as one person (their average, or as BoLID Faces Of One Person "
                "weighted them). Empty slots are ignored; an output is empty when no slot had that kind."
            ),
            inputs=[item for slot in range(1, IDENTITY_SLOTS + 1) for item in _slot_inputs(slot)],
            outputs=[
                FaceEmbedsType.Output(display_name="face_embeds"),
                BodyIDType.Output(display_name="body_id"),
            ],
        )

    @classmethod
    def validate_inputs(
        cls, weight_1: float | None = None, weight_2: float | None = None, weight_3: float | None = None,
        weight_4: float | None = None,
    ) -> bool | str:  # fmt: skip
        return validate_finite_numbers(cls, locals())

    @classmethod
    def execute(cls, weight_1: float, weight_2: float, weight_3: float, weight_4: float, **slots) -> io.NodeOutput:
        weights = [weight_1, weight_2, weight_3, weight_4]
        require_finite_numbers(cls, {f"weight_{slot}": w for slot, w in enumerate(weights, start=1)})
        slot_ids = range(1, IDENTITY_SLOTS + 1)
        faces: list[FaceEmbeds | None] = [slots.get(f"face_embeds_{slot}") for slot in slot_ids]
        bodies: list[BodyID | None] = [slots.get(f"body_id_{slot}") for slot in slot_ids]
        return io.NodeOutput(*mix_identities(faces, bodies, weights))


class FacesOfOnePerson(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDFacesOfOnePerson",
            display_name="BoLID Faces Of One Person",
            category="BoLID/identity",
            description=(
                "Several photos of one person (BoLID Face Embed on an image batch) → one identity: their average, "
                "or weighted by each face's ArcFace norm (clearer faces weigh more). Reports how alike the faces "
                "are (ArcFace cosine) and flags any face far from the others, so a wrong photo is seen."
            ),
            inputs=[
                FaceEmbedsType.Input("face_embeds", tooltip="The faces of one person, one per photo."),
                io.Combo.Input(
                    "combine", options=[mode.value for mode in PhotoCombine], default=PhotoCombine.AVERAGE.value,
                    tooltip="average: equal weights. norm_weighted: weights ∝ the raw ArcFace norm (face quality).",
                ),
                io.Float.Input(
                    "outlier_below", default=DEFAULT_OUTLIER_BELOW, min=-1.0, max=1.0, step=0.01,
                    tooltip="A face whose mean cosine to the others is below this is flagged. Same person: "
                    "typically above 0.4; strangers: about 0.",
                ),
                io.Boolean.Input("drop_outliers", default=False, tooltip="Leave flagged faces out of the identity."),
            ],
            outputs=[
                FaceEmbedsType.Output(display_name="face_embeds"),
                io.String.Output(display_name="report"),
            ],
            is_output_node=True,  # the report is worth seeing before anything uses the faces
        )  # fmt: skip

    @classmethod
    def validate_inputs(cls, outlier_below: float | None = None) -> bool | str:
        return validate_finite_numbers(cls, locals())

    @classmethod
    def execute(cls, face_embeds: FaceEmbeds, combine: str, outlier_below: float, drop_outliers: bool) -> io.NodeOutput:
        require_finite_numbers(cls, {"outlier_below": outlier_below})
        similarity = face_similarity(face_embeds, outlier_below)
        dropped = similarity.outliers if drop_outliers else ()
        combined = combine_photos(face_embeds, combine, drop=dropped)
        report = similarity.text(dropped=dropped, weights=combined.weights)
        return io.NodeOutput(combined, report, ui=ui.PreviewText(report))
