"""Image embeddings: CLIP-vision encoding made once (in batches, optionally tiled), and image/face embeddings saved
to and loaded from models/bolid/embeds as safetensors."""

from __future__ import annotations

from comfy_api.latest import io

from ..bolid_core.adapter.embeds_files import load_face_embeds, load_image_embeds, save_face_embeds, save_image_embeds
from ..bolid_core.adapter.image_embeds import ImageEmbeds
from ..bolid_core.comfy.clip_encoding import encode_images
from ..bolid_core.comfy.folders import embeds_choices, file_fingerprint, new_embeds_path, saved_embeds_path
from ..bolid_core.identity.embeds import FaceEmbeds
from ..bolid_core.image_tiles import MAX_TILES
from .types import FaceEmbedsType, ImageEmbedsType

CATEGORY = "BoLID/embeds"


class EncodeImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDEncodeImage",
            display_name="BoLID Encode Image",
            category=CATEGORY,
            description=(
                "CLIP-vision encodings of reference images, made once: connect them to the apply node's image_embeds "
                "or save them. tiles = 1 encodes each image as ComfyUI does (its centre square). With tiles ≥ 2 "
                "nothing is cut: each image gives the whole image padded to a square, then square tiles covering it "
                "(`tiles` along its long side, evenly overlapping), each a reference the apply node's "
                "combine_references averages or concatenates."
            ),
            inputs=[
                io.ClipVision.Input("clip_vision"),
                io.Image.Input("image"),
                io.Int.Input("tiles", default=1, min=1, max=MAX_TILES,
                             tooltip="1: no tiling. k: the whole image plus square tiles, k along the long side."),
                io.Int.Input("encode_batch_size", default=0, min=0, max=4096,
                             tooltip="How many images (or tiles) go through CLIP vision at once; 0: all."),
                io.Image.Input("image_negative", optional=True,
                               tooltip="Replaces the adapter's null input in the unconditional branch (never tiled)."),
            ],
            outputs=[ImageEmbedsType.Output(display_name="image_embeds")],
        )  # fmt: skip

    @classmethod
    def execute(cls, clip_vision, image, tiles: int, encode_batch_size: int, image_negative=None) -> io.NodeOutput:
        return io.NodeOutput(encode_images(clip_vision, image, encode_batch_size, image_negative, tiles))


class _SaveEmbeds(io.ComfyNode):
    """Saves one kind of embeddings to models/bolid/embeds; a subclass names the kind, its type and its writer."""

    NODE_ID: str
    DISPLAY_NAME: str
    DESCRIPTION: str
    EMBEDS_TYPE: type[io.ComfyTypeIO]
    INPUT_NAME: str
    DEFAULT_PREFIX: str

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY_NAME,
            category=CATEGORY,
            description=cls.DESCRIPTION,
            inputs=[
                cls.EMBEDS_TYPE.Input(cls.INPUT_NAME),
                io.String.Input("filename_prefix", default=cls.DEFAULT_PREFIX),
            ],
            outputs=[io.String.Output(display_name="saved_as")],
            is_output_node=True,
        )


class _LoadEmbeds(io.ComfyNode):
    """Loads one kind of embeddings from models/bolid/embeds, fingerprinted by the file."""

    NODE_ID: str
    DISPLAY_NAME: str
    DESCRIPTION: str
    EMBEDS_TYPE: type[io.ComfyTypeIO]
    OUTPUT_NAME: str

    @staticmethod
    def load(path):
        raise NotImplementedError

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY_NAME,
            category=CATEGORY,
            description=cls.DESCRIPTION,
            inputs=[io.Combo.Input("embeds", options=embeds_choices())],
            outputs=[cls.EMBEDS_TYPE.Output(display_name=cls.OUTPUT_NAME)],
        )

    @classmethod
    def fingerprint_inputs(cls, embeds: str) -> str:
        """The file's fingerprint, so a replaced or deleted file is never served from ComfyUI's cache."""
        try:
            return file_fingerprint(saved_embeds_path(embeds))
        except FileNotFoundError:
            return f"missing:{embeds!r}"  # execute says why
        except ValueError:
            return f"invalid:{embeds!r}"  # execute says why

    @classmethod
    def execute(cls, embeds: str) -> io.NodeOutput:
        return io.NodeOutput(cls.load(saved_embeds_path(embeds)))


class SaveImageEmbeds(_SaveEmbeds):
    NODE_ID = "BoLIDSaveImageEmbeds"
    DISPLAY_NAME = "BoLID Save Image Embeds"
    DESCRIPTION = "Saves image embeddings to models/bolid/embeds/<prefix>_<number>.safetensors."
    EMBEDS_TYPE = ImageEmbedsType
    INPUT_NAME = "image_embeds"
    DEFAULT_PREFIX = "bolid_image_embeds"

    @classmethod
    def execute(cls, image_embeds: ImageEmbeds, filename_prefix: str) -> io.NodeOutput:
        return io.NodeOutput(save_image_embeds(image_embeds, new_embeds_path(filename_prefix)).name)


class LoadImageEmbeds(_LoadEmbeds):
    NODE_ID = "BoLIDLoadImageEmbeds"
    DISPLAY_NAME = "BoLID Load Image Embeds"
    DESCRIPTION = "Image embeddings saved with BoLID Save Image Embeds, from models/bolid/embeds."
    EMBEDS_TYPE = ImageEmbedsType
    OUTPUT_NAME = "image_embeds"
    load = staticmethod(load_image_embeds)


class SaveFaceEmbeds(_SaveEmbeds):
    NODE_ID = "BoLIDSaveFaceEmbeds"
    DISPLAY_NAME = "BoLID Save Face Embeds"
    DESCRIPTION = (
        "Saves face embeddings (ArcFace, and the aligned crops, norms and mix weights when present) to "
        "models/bolid/embeds/<prefix>_<number>.safetensors: a face reused without insightface."
    )
    EMBEDS_TYPE = FaceEmbedsType
    INPUT_NAME = "face_embeds"
    DEFAULT_PREFIX = "bolid_face_embeds"

    @classmethod
    def execute(cls, face_embeds: FaceEmbeds, filename_prefix: str) -> io.NodeOutput:
        return io.NodeOutput(save_face_embeds(face_embeds, new_embeds_path(filename_prefix)).name)


class LoadFaceEmbeds(_LoadEmbeds):
    NODE_ID = "BoLIDLoadFaceEmbeds"
    DISPLAY_NAME = "BoLID Load Face Embeds"
    DESCRIPTION = "Face embeddings saved with BoLID Save Face Embeds, from models/bolid/embeds."
    EMBEDS_TYPE = FaceEmbedsType
    OUTPUT_NAME = "face_embeds"
    load = staticmethod(load_face_embeds)
