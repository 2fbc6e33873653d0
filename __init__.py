"""BoLID node pack: body-aware and identity-preserving generation for ComfyUI's SDXL UNet."""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .bolid_core.comfy.folders import register_model_folders
    from .nodes import BoLIDExtension

    register_model_folders()
    return BoLIDExtension()
