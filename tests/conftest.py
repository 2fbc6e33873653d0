"""Fixtures for the four test tiers (DESIGN.md, "Test tiers").

1. unit: pure torch, `bolid_core` only: no fixture needed.
2. comfy: the real `comfy` package imported in-process; tiny SDXL UNet in a real ModelPatcher.
3. server: a real ComfyUI server on a free loopback port with this pack and the test-only node pack.
4. browser: Debian's chromium, driven by playwright, on the real frontend that server serves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_OUTPUT = REPO_ROOT / "test-output"
TEST_NODE_PACKS = REPO_ROOT / "tests" / "comfy_nodes"

os.environ.setdefault("YOLO_OFFLINE", "true")  # 8.3.x reads only "true"
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


TIERS = ("unit", "comfy", "server", "browser")


def _tier(item: pytest.Item) -> str:
    # Each test file belongs to one tier; its name says which.
    return next((tier for tier in TIERS[1:] if item.path.name.startswith(f"test_{tier}_")), "unit")


def _room() -> str:
    """Free disk under the temporary folder and available memory: a suite failing on a full machine says so."""
    import shutil
    import tempfile

    free_disk = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    available = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        if "MemAvailable" in fields:
            available = f"{int(fields['MemAvailable'].split()[0]) / 2**20:.1f} GiB"
    return f"free disk in {tempfile.gettempdir()}: {free_disk:.1f} GiB, available memory: {available}"


def pytest_report_header() -> str:
    return _room()


def pytest_terminal_summary(terminalreporter) -> None:
    terminalreporter.write_line(_room())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(getattr(pytest.mark, _tier(item)))
    # Cheap tiers first, so a broken core fails in seconds rather than after the servers start.
    items.sort(key=lambda item: TIERS.index(_tier(item)))


@pytest.fixture(scope="session")
def test_output() -> Path:
    TEST_OUTPUT.mkdir(exist_ok=True)
    return TEST_OUTPUT


# --- tier 2: in-process ComfyUI -------------------------------------------------------------------


@pytest.fixture(scope="session")
def comfy_path() -> Path:
    from bolid_dev.runtime import import_comfy_in_process

    return import_comfy_in_process()


@pytest.fixture(scope="session")
def comfy_nodes(comfy_path: Path) -> dict:
    """ComfyUI's NODE_CLASS_MAPPINGS after loading this pack with ComfyUI's own custom-node loader."""
    import nodes

    # On a thread of its own: playwright's sync API may already run an event loop on this one.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        loaded = pool.submit(asyncio.run, nodes.load_custom_node(str(REPO_ROOT))).result()
    assert loaded, "ComfyUI's load_custom_node refused the pack: see the log above"
    return nodes.NODE_CLASS_MAPPINGS


@pytest.fixture()
def one_torch_thread():
    """Tiny models: a second thread only adds contention on a shared machine, and one thread keeps sums in one
    order. A module opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def tiny_model(comfy_path: Path):
    from bolid_test_models.tiny_models import tiny_sdxl_model

    return tiny_sdxl_model(seed=0)


@pytest.fixture()
def tiny_vae(comfy_path: Path):
    from bolid_test_models.tiny_models import tiny_sdxl_vae

    return tiny_sdxl_vae(seed=2)


# --- tier 3: a real server --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory, test_output: Path):
    from bolid_dev.runtime import comfy_server as start

    base = tmp_path_factory.mktemp("comfy-base")
    _skip_first_run_dialogs(base)
    _install_test_assets(base)
    with start(base, with_test_models=True, log_path=test_output / "server" / "comfyui.log") as server:
        yield server


@pytest.fixture(scope="session")
def client(comfy_server):
    from bolid_dev.client import ComfyClient

    return ComfyClient(comfy_server)


def _install_test_assets(base: Path) -> None:
    """What the shipped workflows load besides the base model, as tiny synthetic files under their names.

    They must exist before the server starts: model combos are listed from the folders.
    """
    import numpy as np
    from adapter_factories import plus_ip_adapter
    from PIL import Image
    from safetensors.torch import save_file

    adapters = base / "models" / "ipadapter"
    adapters.mkdir(parents=True)
    plus = {key: value.contiguous() for key, value in plus_ip_adapter().items()}
    save_file(plus, str(adapters / "ip-adapter-plus_sdxl_vit-h.safetensors"))
    (base / "input").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name, size in (
        ("bolid_reference", (96, 80)),
        ("bolid_body_front", (192, 128)),
        ("bolid_body_side", (160, 128)),
    ):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(base / "input" / f"{name}.png")
    _install_body_assets(base)
    _install_face_assets(base)
    _install_region_assets(base)
    _install_training_assets(base)


def _install_training_assets(base: Path) -> None:
    """The shipped training workflow's dataset: two people, two random views each, a caption per person."""
    import numpy as np
    from PIL import Image

    root = base / "input" / "bolid_datasets" / "bolid_example_people"
    rng = np.random.default_rng(0)
    for person in ("ann", "bob"):
        (root / person).mkdir(parents=True, exist_ok=True)
        for view in range(2):
            pixels = rng.integers(0, 255, (80, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / person / f"view_{view}.png")
        (root / person / "caption.txt").write_text(f"a photo of {person}")


def _install_region_assets(base: Path) -> None:
    """A random YOLO11-seg model, a layout photo, a two-colour region image, a FaceStudio adapter (hybrid face,
    text prior, body) and a second saved body."""
    import numpy as np
    from hybrid_factories import hybrid_adapter
    from PIL import Image
    from region_assets import IMAGE_SIZE, REGION_COLUMNS, REGIONS_IMAGE
    from segmentation_factories import person_seg_model

    from bolid_core.adapter import save_adapter
    from bolid_core.body import sample_prior, save_body_id

    person_seg_model(base / "models" / "ultralytics" / "yolo11n-seg.pt")
    regions = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for channel, (x0, x1) in enumerate(REGION_COLUMNS):
        regions[:, x0:x1, channel] = 255
    Image.fromarray(regions).save(base / "input" / REGIONS_IMAGE)
    layout = np.random.default_rng(5).integers(0, 255, (192, 256, 3), dtype=np.uint8)
    Image.fromarray(layout).save(base / "input" / "bolid_two_people_layout.png")
    bolid = base / "models" / "bolid"
    save_adapter(hybrid_adapter(seed=5, image=False), bolid / "bolid_sdxl_facestudio.safetensors")
    save_body_id(sample_prior(756, seed=2), bolid / "bodies" / "other_body.safetensors")


def _install_face_assets(base: Path) -> None:
    """A FaceID-Plus-v2 .bin with the published layout (fp16, one resampler layer), its LoRA with the published
    key names, an insightface pack, a face."""
    import torch
    from adapter_factories import TINY_SDXL_WIDTHS, faceid_plus_v2, nested
    from lora_factories import FILE_NAME, faceid_plusv2_sdxl_lora, tiny_attention_blocks
    from onnx_factories import build_model_pack, face_image
    from PIL import Image
    from safetensors.torch import save_file

    state = faceid_plus_v2(context_dim=2048, widths=TINY_SDXL_WIDTHS, clip_dim=1280, depth=1)
    torch.save(
        nested({key: value.half() for key, value in state.items()}),
        base / "models" / "ipadapter" / "ip-adapter-faceid-plusv2_sdxl.bin",
    )
    loras = base / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    save_file(faceid_plusv2_sdxl_lora(tiny_attention_blocks(), model_channels=32), str(loras / FILE_NAME))
    build_model_pack(base / "models" / "insightface")
    Image.fromarray(face_image(640, 640, [(320, 320, 40)])).save(base / "input" / "bolid_face.png")
    # Faces sit on the synthetic detector's anchor grid (multiples of 32). The same person elsewhere, and a second
    # person: a larger face with a dark stripe, so the linear synthetic ArcFace gives another embedding.
    Image.fromarray(face_image(640, 640, [(288, 352, 40)])).save(base / "input" / "bolid_face_2.png")
    second_person = face_image(640, 640, [(320, 320, 48)])
    second_person[326:330, 296:344] = 0
    Image.fromarray(second_person).save(base / "input" / "bolid_face_b.png")


def _install_body_assets(base: Path) -> None:
    """A random YOLO11-pose model, a small body VAE, a BoLID adapter (image + body) and a saved body."""
    import torch
    from adapter_factories import TINY_SDXL_WIDTHS
    from ultralytics import YOLO

    from bolid_core.adapter import AdapterKind, AdapterSpec, ClipInput, Source, new_bolid_adapter, save_adapter
    from bolid_core.body import sample_prior, save_body_id
    from bolid_core.body.vae import BodyVAE, BodyVAEConfig, save_body_vae

    (base / "models" / "ultralytics").mkdir(parents=True)
    torch.manual_seed(0)
    YOLO("yolo11n-pose.yaml").save(str(base / "models" / "ultralytics" / "yolo11n-pose.pt"))
    bolid = base / "models" / "bolid"
    save_body_vae(BodyVAE(BodyVAEConfig(image_size=64, channels=(16, 32))), bolid / "bolid_body_vae.safetensors")
    spec = AdapterSpec(
        AdapterKind.BOLID, 2048, TINY_SDXL_WIDTHS, {Source.IMAGE: 4, Source.BODY: 4},
        clip_dim=1024, clip_input=ClipInput.EMBEDS, body_dim=756,
    )  # fmt: skip
    adapter = new_bolid_adapter(spec)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.normal_(0.0, 0.05)
    save_adapter(adapter, bolid / "bolid_sdxl_adapter.safetensors")
    save_body_id(sample_prior(756, seed=1), bolid / "bodies" / "my_body.safetensors")


def _skip_first_run_dialogs(base: Path) -> None:
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    # The minimap would cover the screenshots' corner; LOD off so a zoomed-out screenshot still draws the widgets.
    settings.write_text(
        json.dumps(
            {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "LiteGraph.Canvas.MinFontSizeForLOD": 0}
        )
    )


# --- tier 4: browser --------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/setup.sh --browser` (installs Debian's chromium).")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def baseline_server(tmp_path_factory: pytest.TempPathFactory, test_output: Path):
    """The same ComfyUI without this pack, to tell the frontend's own console errors from ours."""
    from bolid_dev.runtime import comfy_server as start

    base = tmp_path_factory.mktemp("comfy-baseline")
    _skip_first_run_dialogs(base)
    log_path = test_output / "baseline" / "comfyui.log"
    with start(base, with_test_models=False, with_pack=False, log_path=log_path) as server:
        yield server


@pytest.fixture(scope="session")
def baseline_errors(browser, baseline_server) -> set[str]:
    """The console errors the frontend logs without the pack: what the browser tests do not count against it."""
    from browser_app import open_app

    page, errors = open_app(browser, baseline_server)
    page.close()
    return set(errors)
